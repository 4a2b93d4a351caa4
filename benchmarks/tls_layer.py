"""The TLS layer alone: the server's CPU time for a request's record in and its reply's
record out, through Twisted's TLS transport and through ours
(``wyseman.ws.twisted_io.QuickTLSTransport``), in the same run.

    python -m benchmarks.tls_layer [--requests N] [--rounds R] [--connections C]

Each round times N request/reply cycles on C connections (a record from a client
session, the server's reply written and flushed at the end of the turn), on memory
transports, with the reactor's own timers (its ``callLater`` and ``runUntilCurrent``, the
loop itself not running): no sockets, no database, no WebSocket, so what differs is the
TLS layer only. The two transports alternate round by round and the best round of
each is kept (a neighbour's load only slows a round down). The end-to-end effect is
measured by ``python -m benchmarks.run --scenario tuple --transport wss``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import protocol, reactor
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from wyseman.localca import ensure_local_tls
from wyseman.ws.twisted_io import quick_tls

REQUEST = b"\x81\xfe\x00\x96" + b"r" * 150      # a masked-size text frame's bytes
REPLY = b"\x81\x7e\x01\x90" + b"y" * 400


class _Sink(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        pass


def _client() -> SSL.Connection:
    tls = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    tls.set_connect_state()
    return tls


def _drain(tls: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += tls.bio_read(65536)
        except SSL.WantReadError:
            return out


def _connected(factory: TLSMemoryBIOFactory, quick: bool
               ) -> tuple[protocol.Protocol, StringTransport, SSL.Connection]:
    """A connection of the port's ``factory`` past its handshake; → (server, its TCP
    transport, client)."""
    server = factory.buildProtocol(None)
    if quick and not quick_tls(server):
        raise SystemExit("the quick TLS layer does not apply with this Twisted/pyOpenSSL")
    tcp = StringTransport()
    server.makeConnection(tcp)
    client = _client()
    for _ in range(10):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        sent = _drain(client)
        if sent:
            server.dataReceived(sent)
        if tcp.value():
            client.bio_write(tcp.value())
            tcp.clear()
    if not server._handshakeDone:
        raise SystemExit("the handshake did not finish")
    return server, tcp, client


def one_round(options: object, quick: bool, requests: int, connections: int) -> float:
    """µs of CPU a request/reply cycle: in each turn every connection gets a request's
    record and writes its reply; the clock's turn then ends."""
    clock: Any = reactor
    factory = TLSMemoryBIOFactory(options, False, protocol.Factory.forProtocol(_Sink),
                                  clock=clock)
    pairs = [_connected(factory, quick) for _ in range(connections)]
    turns = max(1, requests // connections)
    records = []           # (made beforehand: encrypting them is the client's work)
    for _server, _tcp, client in pairs:
        mine = []
        for _ in range(turns):
            client.send(REQUEST)
            mine.append(_drain(client))
        records.append(mine)
    start = time.process_time()
    for turn in range(turns):
        for (server, _tcp, _client_tls), mine in zip(pairs, records, strict=True):
            server.dataReceived(mine[turn])
            server.write(REPLY)
        clock.runUntilCurrent()             # the turn's end: its callLater(0) calls
        for _server, tcp, _client_tls in pairs:
            tcp.clear()
    elapsed = time.process_time() - start
    return 1e6 * elapsed / (turns * connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = ensure_local_tls(Path(folder))
        options = PrivateCertificate.loadPEM(
            files.cert.read_text() + files.key.read_text()).options()
    best = {False: float("inf"), True: float("inf")}
    for _ in range(args.rounds):
        for quick in (False, True):
            best[quick] = min(best[quick], one_round(options, quick, args.requests,
                                                     args.connections))
    print(f"TLS layer, a request's record in and its reply's out, {args.connections} "
          f"connections, best of {args.rounds} rounds:")
    print(f"  Twisted's TLS transport   {best[False]:7.2f} µs")
    print(f"  ours (QuickTLSTransport)  {best[True]:7.2f} µs   "
          f"({best[True] / best[False]:.2f}×)")


if __name__ == "__main__":
    main()
