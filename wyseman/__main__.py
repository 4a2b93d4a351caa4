import sys

from wyseman.cli import main

sys.exit(main())
