"""The notify benchmark's reader (benchmarks/wsclient.py): frames read one per read and
timed by the kernel's receive time, so that the measuring stick itself is checked."""

from __future__ import annotations

import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import wsclient
from benchmarks.wsclient import SO_TIMESTAMPNS, _frame_size, _read_stamped


def server_frame(payload: bytes) -> bytes:
    """An unmasked text frame, as the server sends."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, n])
    elif n < 65536:
        head = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return head + payload


class FrameSizeTests(SynchronousTestCase):
    def test_sizes_from_headers(self) -> None:
        for n in (0, 125, 126, 65535, 65536):
            frame = server_frame(b"x" * n)
            self.assertEqual(_frame_size(frame[:14]), len(frame), n)
        self.assertIsNone(_frame_size(b"\x81"))
        self.assertIsNone(_frame_size(bytes([0x81, 126, 1])))          # extended length cut
        self.assertIsNone(_frame_size(bytes([0x81, 127]) + b"\0" * 7))


class StampedReadTests(SynchronousTestCase):
    def setUp(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.sender = socket.create_connection(listener.getsockname())
        self.addCleanup(self.sender.close)
        self.receiver, _ = listener.accept()
        self.addCleanup(self.receiver.close)
        self.receiver.setblocking(False)
        self.receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # The kernel turns receive timestamps on from a work queue, a moment after the
        # first socket asks: until then segments come unstamped. Probe until one is.
        deadline = time.monotonic() + 10
        while True:
            unstamped = wsclient.unstamped_reads[0]
            self.sender.sendall(server_frame(b"probe"))
            while not _read_stamped(self.receiver):
                pass                                   # (loopback: there at once)
            if wsclient.unstamped_reads[0] == unstamped:
                break
            self.assertLess(time.monotonic(), deadline, "no receive timestamps")

    def test_each_frame_read_alone_with_its_arrival_time(self) -> None:
        first = server_frame(b"a" * 10)
        before = time.time()
        self.sender.sendall(first)          # on loopback, received within the call
        after = time.time()
        unstamped = wsclient.unstamped_reads[0]
        [(data, at)] = _read_stamped(self.receiver)
        self.assertEqual(wsclient.unstamped_reads[0], unstamped)   # the kernel's time
        self.assertEqual(data, first)
        self.assertTrue(before <= at <= after, (before, at, after))

    def test_frames_read_together_are_late_never_early(self) -> None:
        """Two frames that arrive before a read: read one at a time; the kernel may have
        merged their segments and given both the second's time, never an earlier one."""
        frames = [server_frame(b"b" * 300), server_frame(b"c" * 70_000)]
        sent = []
        for frame in frames:
            sent.append(time.time())
            self.sender.sendall(frame)
        after = time.time()
        chunks = []
        while len(b"".join(data for data, _ in chunks)) < sum(map(len, frames)):
            chunks.extend(_read_stamped(self.receiver))
        self.assertEqual(chunks[0][0], frames[0])
        self.assertEqual(b"".join(data for data, _ in chunks[1:]), frames[1])
        self.assertTrue(sent[0] <= chunks[0][1] <= after)
        self.assertTrue(all(sent[1] <= at <= time.time() for _, at in chunks[1:]), chunks)
        self.assertEqual(_read_stamped(self.receiver), [])   # nothing more: no EOF either

    def test_end_of_stream(self) -> None:
        self.sender.sendall(server_frame(b"last"))
        self.sender.shutdown(socket.SHUT_WR)
        chunks = _read_stamped(self.receiver)
        self.assertEqual([data for data, _ in chunks], [server_frame(b"last"), b""])
