import sys

from wyseman.application.cli import main

sys.exit(main())
