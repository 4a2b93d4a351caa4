"""The test suite's own PostgreSQL (tests/pgtest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.pgtest import start_on_a_free_port
from wyseman.provision.cluster import LocalCluster


class FreePortTests(SynchronousTestCase):
    def test_a_port_taken_since_it_was_probed_is_replaced(self) -> None:
        # Another process (a parallel trial worker's cluster, a test server) took the port.
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        root = Path(tempfile.mkdtemp(prefix="wyseman-test-port-"))   # short: a socket path
        os.chmod(root, 0o755)
        self.addCleanup(shutil.rmtree, root, True)
        cluster = LocalCluster(root / "data", port=port, listen_tcp=True,
                               socket_dir=root / "sock")
        self.addCleanup(cluster.remove)
        cluster.init()
        start_on_a_free_port(cluster)
        self.assertNotEqual(cluster.port, port)
        self.assertTrue(cluster.is_running())
        self.assertIn("1", cluster.run_psql("select 1"))
