"""One notification frame to many sockets, the ``send`` calls spread over threads.

A notification for 10,000 subscribers is 10,000 ``send`` system calls, and they are
~95 % of the fan-out: on loopback each costs 8–12 µs of kernel time (the receiving
side's TCP work runs in the sender's call), so one thread needs ~100 ms. Python
releases the GIL for the duration of ``send``, so with helper threads the calls run
on several cores at once. On a 2-core VM a bare loop of 10,000 sends took 45–68 ms on
two threads instead of 75–105 on one, and the server's fan-out to 10,000 sockets
83–110 ms instead of 120–145 (docs/performance.md,
"Notifications to 10,000 sockets").

The reactor thread first picks the sockets that take the frame at once (open, nothing
queued, plain TCP: :meth:`GatewayProtocol.direct_send`); the threads then only call
``send`` on them (between two calls the GIL is held for a moment only, so the threads
rarely wait for it), the reactor thread sending its own share and then waiting for
theirs: no Twisted object is used by two threads at a time. What falls short, and the
other sockets (queued output), are finished by the reactor thread afterwards through
the usual path.

A TLS socket needs its own record: the frame encrypted by the socket's TLS session.
For those with nothing queued in any layer (:meth:`GatewayProtocol.direct_tls_target`)
the reactor thread makes every record first, then the threads send them as they send
plain frames. Encrypting on the helpers too, or handing them records while more are
made, was slower (measured): OpenSSL's calls are short and release the GIL, so two
threads that make records pass the GIL back and forth at every call, while a thread
that only sends holds it for a moment between calls of ~10 µs. A session that does
not take the frame (it wants to read first) is given it the usual way afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wyseman.tuning.affinity import auto_threads, release_helper_thread
from wyseman.ws.autobahn_fast import FastServerProtocol, prepare_frame
from wyseman.ws.twisted_io import TLS_RECORD_DATA, seal, send_some

#: below this many sockets a fan-out is not worth handing to threads
MIN_PARALLEL_SOCKETS = 1024


def _send_share(sends: Sequence[Any], data: bytes) -> list[tuple[int, int]]:
    """Call each ``socket.send`` with ``data``; (index, bytes written) of those that
    fell short. Nothing else happens between the calls, so the GIL is held briefly."""
    size = len(data)
    short = []
    for index, send in enumerate(sends):
        written = send_some(send, data)
        if written != size:
            short.append((index, written))
    return short


def _send_records(sends: Sequence[Any], records: Sequence[bytes]) -> list[tuple[int, int]]:
    """Send each socket its own record; (index, bytes written) of those that fell
    short."""
    short = []
    for index, send in enumerate(sends):
        record = records[index]
        written = send_some(send, record)
        if written != len(record):
            short.append((index, written))
    return short


class FanOut:
    """Sends one prepared frame to a list of protocols, with ``threads - 1`` helpers."""

    def __init__(self, threads: int, min_parallel: int = MIN_PARALLEL_SOCKETS) -> None:
        self.threads = max(1, threads)
        self.min_parallel = min_parallel
        self._pool: ThreadPoolExecutor | None = None

    def _helpers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1,
                                            thread_name_prefix="wyseman-fanout",
                                            initializer=release_helper_thread)
        return self._pool

    def send(self, protocols: Sequence[Any], frame: Any) -> int:
        """Send ``frame`` (a prepared message) to every protocol; the number that took
        it (or queued it) — the others are closing."""
        if self.threads == 1 or len(protocols) < self.min_parallel:
            return sum(1 for protocol in protocols if protocol.send_notification(frame))
        data = frame.payloadHybi
        sealable = len(data) <= TLS_RECORD_DATA
        direct, sends, secured, targets, others = [], [], [], [], []
        for protocol in protocols:       # which sockets take the bytes at once
            send = protocol.direct_send()
            if send is not None:
                direct.append(protocol)
                sends.append(send)
                continue
            target = protocol.direct_tls_target() if sealable else None
            if target is None:
                others.append(protocol)
            else:
                secured.append(protocol)
                targets.append(target)
        step = self.threads
        pool = self._helpers()
        plain = [(i, pool.submit(_send_share, sends[i::step], data)) for i in range(1, step)]
        short = [(0, index, written) for index, written in _send_share(sends[0::step], data)]
        # TLS sockets: every record made here first, then sent by all threads
        retry, sealed, records = [], [], []
        for protocol, target in zip(secured, targets, strict=True):
            record = seal(target, data)
            if record is None:           # the TLS session did not take it: the usual way
                retry.append(protocol)
                continue
            sealed.append(target)
            records.append(record)
        record_sends = [target.send for target in sealed]
        secure = [(i, pool.submit(_send_records, record_sends[i::step], records[i::step]))
                  for i in range(1, step) if sealed]
        short_tls = [(0, index, written) for index, written in
                     _send_records(record_sends[0::step], records[0::step])]
        for i, future in plain:
            short.extend((i, index, written) for index, written in future.result())
        for i, future in secure:
            short_tls.extend((i, index, written) for index, written in future.result())
        # back on the reactor thread: what fell short is buffered by Twisted
        for i, index, written in short:
            direct[i + index * step].send_rest(data, written)
        for i, index, written in short_tls:
            at = i + index * step
            sealed[at].connection.write(records[at][written:])
        sent = len(direct) + len(sealed)
        for protocol in others + retry:
            sent += protocol.send_notification(frame)
        return sent

    def broadcast(self, protocols: Sequence[Any], payload: bytes) -> int:
        """Frame ``payload`` (an encoded text message) once and send it to every
        WebSocket (:class:`wyseman.gateway.seams.Broadcaster`); → how many took it.

        The hub's subscribers are the connections of every transport: one that is not
        a WebSocket (a libp2p stream) frames the message itself, through its
        session's ``send``."""
        sockets = protocols
        others = [p for p in protocols if not isinstance(p, FastServerProtocol)]
        if others:
            sockets = [p for p in protocols if isinstance(p, FastServerProtocol)]
        sent = self.send(sockets, prepare_frame(payload)) if sockets else 0
        for connection in others:
            if connection.session.send(payload):
                sent += 1
        return sent

    def close(self) -> None:
        """Stop the helper threads; a notification that still comes (the service is
        stopping) is sent by the calling thread alone."""
        self.threads = 1
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


__all__ = ["FanOut", "MIN_PARALLEL_SOCKETS", "auto_threads"]
