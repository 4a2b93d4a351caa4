"""The library internals the fast paths rely on, named in one place: a new Autobahn,
txpostgres or Twisted that drops or renames one fails here, not in production.

Each name is one the code overrides or calls although the library does not document it
(docs/performance.md says what each fast path saves). setup.cfg pins autobahn and
txpostgres below their next major versions, the newest tested."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

#: Autobahn's WebSocketProtocol members used by wyseman.ws.autobahn_fast and wyseman.ws.protocol
AUTOBAHN_PROTOCOL = (
    "_connectionMade", "_dataReceived", "_cancelAutoPingTimeoutCall", "_sendAutoPing",
    "processData", "sendData", "sendFrame", "sendCloseFrame",
    "failHandshake", "sendHttpErrorResponse", "dropConnection", "onPing", "sendPong",
    "processHandshake", "STATE_OPEN", "STATE_CLOSED", "STATE_CLOSING")
#: txpostgres members used or overridden by wyseman.db.pg
TXPOSTGRES_CONNECTION = ("cursorRunning", "cursorFinished", "doRead", "doWrite",
                         "connectionLost", "checkForNotifies", "runInteraction", "cursor",
                         "addNotifyObserver", "removeNotifyObserver", "getNotifyObservers",
                         "cancel", "runOperation")
TXPOSTGRES_CURSOR = ("continuePolling", "execute")


class LibraryInternalsTests(SynchronousTestCase):
    def assert_has(self, cls: type, names: tuple[str, ...]) -> None:
        missing = [name for name in names if not hasattr(cls, name)]
        self.assertEqual(missing, [], f"{cls.__module__}.{cls.__qualname__}")

    def test_autobahn(self) -> None:
        import inspect

        from autobahn.twisted.websocket import WebSocketClientProtocol
        from autobahn.websocket.protocol import WebSocketProtocol, WebSocketServerProtocol
        self.assert_has(WebSocketServerProtocol, AUTOBAHN_PROTOCOL)
        self.assert_has(WebSocketClientProtocol, ("failHandshake",))
        # an instance attribute (set as a connection opens): read by the direct writes
        self.assertIn("self._perMessageCompress", inspect.getsource(WebSocketProtocol))

    def test_txpostgres(self) -> None:
        from txpostgres import txpostgres
        self.assert_has(txpostgres.Connection, TXPOSTGRES_CONNECTION)
        self.assert_has(txpostgres.Cursor, TXPOSTGRES_CURSOR)
        self.assertTrue(hasattr(txpostgres, "UnexpectedPollResult"))
        # (an instance attribute: the Cooperator NOTIFYs are handed out by)
        import inspect
        self.assertIn("self.cooperator = ", inspect.getsource(txpostgres.Connection.__init__))

    def test_twisted(self) -> None:
        """What wyseman.ws.twisted_io reads of a TCP transport."""
        import inspect

        from twisted.internet import abstract, tcp
        self.assertTrue(hasattr(tcp.Server, "connected"))
        self.assertTrue(hasattr(tcp.Server, "disconnecting"))
        self.assertTrue(hasattr(tcp.Server, "getHandle"))
        # instance attributes, set as a connection is made or written to
        self.assertTrue(hasattr(abstract.FileDescriptor, "dataBuffer"))
        self.assertIn("self._tempDataBuffer", inspect.getsource(abstract.FileDescriptor))
        self.assertIn("self.socket", inspect.getsource(tcp.Connection.__init__))
        # the TLS layer sends its records through its transport's write, which
        # twisted_io.direct_tls_writes replaces on the connection
        from twisted.protocols.tls import TLSMemoryBIOProtocol
        self.assertIn("self.transport.write(",
                      inspect.getsource(TLSMemoryBIOProtocol._flushSendBIO))
        # twisted_io.tls_write_now: the TLS transport's aggregation of small writes
        from twisted.protocols.tls import BufferingTLSTransport, _AggregateSmallWrites
        self.assertIn("self._aggregator = _AggregateSmallWrites(",
                      inspect.getsource(BufferingTLSTransport.__init__))
        self.assertIn("self._buffer", inspect.getsource(_AggregateSmallWrites))
        # twisted_io.tls_target: what tells that the TLS layer holds nothing and is past
        # its handshake, and its pyOpenSSL session (memory BIOs)
        source = inspect.getsource(TLSMemoryBIOProtocol)
        for name in ("self._tlsConnection = ", "self._handshakeDone = True",
                     "self._lostTLSConnection = ", "self._appSendBuffer = "):
            self.assertIn(name, source)
        self.assertIn("self._tlsConnection.bio_read(", inspect.getsource(
            TLSMemoryBIOProtocol._flushSendBIO))
        # twisted_io.QuickTLSTransport: the reading it replaces, what that calls, and
        # the aggregation it goes around
        reading = inspect.getsource(TLSMemoryBIOProtocol._flushReceiveBIO)
        for name in ("self._tlsConnection.recv(", "self._shutdownTLS()",
                     "self._tlsShutdownFinished(", "self._aborted",
                     "ProtocolWrapper.dataReceived(self, "):
            self.assertIn(name, reading)
        self.assertIn("self._flushReceiveBIO()",
                      inspect.getsource(TLSMemoryBIOProtocol.connectionLost))
        # (which QuickTLSTransport calls as the one line it is)
        from twisted.protocols.policies import ProtocolWrapper
        forwarding = inspect.getsource(ProtocolWrapper.dataReceived).strip().splitlines()
        self.assertEqual(forwarding[-1].strip(), "self.wrappedProtocol.dataReceived(data)")
        self.assertEqual(len([line for line in forwarding if line.strip()]), 2)
        # and the one check of TLSMemoryBIOProtocol.write that its write makes itself
        self.assertIn("if self.disconnecting and self._producer is None:",
                      inspect.getsource(TLSMemoryBIOProtocol.write))
        # and the writing and receiving it replaces once a session is established
        writing = inspect.getsource(TLSMemoryBIOProtocol._write)
        for name in ("self._tlsConnection.send(", "self._bufferedWrite(",
                     "self._tlsShutdownFinished(Failure())", "self._flushSendBIO()"):
            self.assertIn(name, writing)
        receiving = inspect.getsource(TLSMemoryBIOProtocol.dataReceived)
        for name in ("self._tlsConnection.bio_write(", "self._unbufferPendingWrites()",
                     "self._flushReceiveBIO()"):
            self.assertIn(name, receiving)
        self.assertIn("self.write = self._aggregator.write",
                      inspect.getsource(BufferingTLSTransport.__init__))
        aggregation = inspect.getsource(_AggregateSmallWrites.__init__)
        for name in ("self._scheduled", "self._clock = "):
            self.assertIn(name, aggregation)

    def test_pyopenssl(self) -> None:
        """What wyseman.ws.twisted_io.QuickTLSTransport reads of a pyOpenSSL session: its
        memory BIOs and how many bytes each holds."""
        import inspect

        from OpenSSL import SSL

        from wyseman.ws import twisted_io
        source = inspect.getsource(SSL.Connection.__init__)
        for name in ("self._into_ssl = ", "self._from_ssl = ", "self._ssl = "):
            self.assertIn(name, source)
        self.assertIsNotNone(twisted_io._bytes_in)
        # the direct calls: the binding's functions, and pyOpenSSL's own way of raising
        # what a failed call means
        self.assertIsNotNone(twisted_io._direct)
        raising = inspect.signature(SSL.Connection._raise_ssl_error)
        self.assertEqual(list(raising.parameters), ["self", "ssl", "result"])

    def test_every_override_is_listed(self) -> None:
        """A new override of an Autobahn member goes into the list above."""
        from autobahn.websocket.protocol import WebSocketServerProtocol

        from wyseman.ws.autobahn_fast import FastServerProtocol
        from wyseman.ws.protocol import GatewayProtocol
        private = {name for cls in (FastServerProtocol, GatewayProtocol) for name in vars(cls)
                   if name.startswith("_") and not name.startswith("__")
                   and hasattr(WebSocketServerProtocol, name)}
        self.assertLessEqual(private, set(AUTOBAHN_PROTOCOL))
        # the overrides of Autobahn's members for speed are all in one module
        overridden = {name for name in vars(GatewayProtocol)
                      if hasattr(WebSocketServerProtocol, name) and not name.startswith("__")}
        self.assertLessEqual(overridden, {"onConnect", "onOpen", "onMessage", "onPing",
                                          "onClose"})
