"""One load-generator process: ``python -m benchmarks.loadgen SPEC_JSON``.

The runner starts several of these so that the generator is not the bottleneck. Each
speaks JSON lines on stdout and takes commands on stdin:

1. it fetches ``/clientinfo`` once, opens its connections (signed key logins) and prints
   ``{"event": "ready", ...}``; with ``plain_user`` it logs in with the user name alone
   (``/?user=NAME``, no ``/clientinfo``, no signature): how clients log in to the Node.js
   Wyseman server's insecure mode, the baseline server of the benchmark;
2. on ``go`` it runs its mode and prints ``{"event": "result", ...}`` (on ``stop``
   it reports what it has so far);
3. on ``end`` (or end of input) it drops its sockets and exits.

Modes (``spec["mode"]``):

* ``requests``: ``connections`` sockets; before ``ready``, ``message`` is sent once on
  the first (the reply goes into the ready event as ``verify``, data included) and, unless
  ``warm_all`` is false, once on every socket; on ``go`` each socket keeps ``depth``
  copies of ``message`` in flight; after ``warmup`` seconds, replies to requests sent and
  answered within the next ``duration`` seconds are counted and their latencies kept.
* ``notify``: ``connections`` sockets LISTENing to ``channel``; every notification's
  payload carries the sender's ``time.time()`` (``t``) and phase (``p``); the result
  comes once ``expected`` notifications reached every socket (or on ``stop``).
* ``handshake``: ``workers`` loops of log in → 101 → close → TCP closed, for ``duration``
  seconds after ``warmup``, with ``presign`` signatures made before ``ready`` (with
  ``clientinfo_each`` every login first fetches ``/clientinfo`` and signs its date, as
  the JS client does).
* ``idle``: ``warm`` sockets (one request each) before ``ready``; on ``go``, opens
  ``connections`` more that stay silent.

``tls_ca`` (a CA file) makes every connection ``wss://`` (and ``/clientinfo`` HTTPS),
trusting that CA only. ``ip`` signs logins for that address without fetching
``/clientinfo`` (the Node server has none; on loopback the address is 127.0.0.1).

Every result carries the process's CPU seconds (``resource.getrusage``) over the
measured window, so the runner can tell a saturated generator from a slow server.
"""

from __future__ import annotations

import asyncio
import base64
import random
import resource
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from benchmarks import raise_fd_limit, wsclient
from benchmarks.wsclient import HandshakeError, WebSocket, connect, get_json, receive_raw
from wyseman.auth.credentials import js_date, signed_message
from wyseman.client import keys

MAX_SAMPLES = 200_000
P521_BYTES = 66


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def sample(values: list[float]) -> list[float]:
    """Latencies (seconds) → at most MAX_SAMPLES values in ms, rounded to µs."""
    if len(values) > MAX_SAMPLES:
        values = random.sample(values, MAX_SAMPLES)
    return [round(v * 1000.0, 3) for v in values]


class Signer:
    """Key logins for the spec's users (private keys parsed once)."""

    def __init__(self, users: list[dict[str, Any]], ip: str) -> None:
        self.users = users
        self.ip = ip
        self._keys = [keys.private_key(u["key"]) for u in users]
        self._algorithm = ec.ECDSA(hashes.SHA384())

    def target(self, index: int, date: str | None = None, listen: str | None = None,
               ip: str | None = None) -> str:
        """``/?user=…&sign=…&date=…`` for connection ``index`` (user = index mod n)."""
        slot = index % len(self.users)
        date = date or js_date(datetime.now(UTC))
        message = signed_message(ip or self.ip, None, None, date)
        r, s = decode_dss_signature(self._keys[slot].sign(message, self._algorithm))
        raw = r.to_bytes(P521_BYTES, "big") + s.to_bytes(P521_BYTES, "big")
        sign = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        query = f"user={quote(self.users[slot]['name'])}&sign={sign}&date={quote(date)}"
        if listen:
            query += f"&db={listen}"
        return "/?" + query


class PlainUser:
    """``/?user=…`` only: how clients log in to the Node server's insecure mode (the
    baseline server of the benchmark; ours refuses this unless configured)."""

    def __init__(self, users: list[dict[str, Any]]) -> None:
        self.users = users

    def target(self, index: int, date: str | None = None, listen: str | None = None,
               ip: str | None = None) -> str:
        query = f"user={quote(self.users[index % len(self.users)]['name'])}"
        if listen:
            query += f"&db={listen}"
        return "/?" + query


class LoadGen:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.host: str = spec.get("host", "127.0.0.1")
        self.port: int = spec["port"]
        self.first: int = spec.get("first", 0)
        self.timeout: float = spec.get("connect_timeout", 60.0)
        self.tls = wsclient.client_context(spec["tls_ca"]) if spec.get("tls_ca") else None
        self.sockets: list[WebSocket] = []
        self.open_errors: Counter[str] = Counter()
        self.go = asyncio.Event()
        self.stop = asyncio.Event()
        self.end = asyncio.Event()
        self.signer: Signer | PlainUser | None = None

    # -- plumbing ---------------------------------------------------------------
    async def control(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).strip().decode()
            if line == "go":
                self.go.set()
            elif line == "stop":
                self.stop.set()
            elif line == "end" or not line:
                self.go.set()
                self.stop.set()
                self.end.set()
                return

    async def open_many(self, count: int, first: int, on_message: Any = None,
                        listen: str | None = None) -> list[WebSocket]:
        assert self.signer is not None
        signer = self.signer
        gate = asyncio.Semaphore(self.spec.get("open_concurrency", 32))
        opened: list[WebSocket] = []

        async def one(index: int) -> None:
            async with gate:
                if self.end.is_set():
                    return
                try:
                    ws = await connect(self.host, self.port, signer.target(index, listen=listen),
                                       on_message, timeout=self.timeout, tls=self.tls)
                except HandshakeError as exc:
                    self.open_errors[f"{exc.status} {exc.body[:60]}"] += 1
                except (OSError, TimeoutError) as exc:
                    self.open_errors[type(exc).__name__ + " " + str(exc)[:60]] += 1
                else:
                    opened.append(ws)

        await asyncio.gather(*(one(first + i) for i in range(count)))
        self.sockets.extend(opened)
        return opened

    def ready(self, **fields: Any) -> None:
        emit("ready", opened=len(self.sockets), open_errors=dict(self.open_errors), **fields)

    # -- modes ------------------------------------------------------------------------
    async def run(self) -> None:
        if self.spec.get("plain_user"):
            self.signer = PlainUser(self.spec["users"])
        elif self.spec.get("ip"):
            self.signer = Signer(self.spec["users"], self.spec["ip"])
        else:
            info = await get_json(self.host, self.port, "/clientinfo", tls=self.tls)
            self.signer = Signer(self.spec["users"], info["ip"])
        control = asyncio.create_task(self.control())
        mode = self.spec["mode"]
        try:
            await getattr(self, "mode_" + mode)()
            await self.end.wait()
        finally:
            control.cancel()
            for ws in self.sockets:
                ws.abort()

    async def mode_requests(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        depth = int(spec.get("depth", 1))
        warmup = float(spec.get("warmup", 0.5))
        duration = float(spec["duration"])
        body = orjson.dumps(spec["message"])[1:]  # '"action":…}' after the id
        latencies: list[float] = []
        counts = Counter()
        first_error: list[str] = []
        window = [float("inf"), float("inf")]  # perf_counter start/end of the measured part
        next_id = [0]
        done = asyncio.Event()
        in_flight = [0]
        check: list[Any] = []

        def send(ws: WebSocket) -> None:
            next_id[0] += 1
            rid = next_id[0]
            ws.tag[rid] = time.perf_counter()
            in_flight[0] += 1
            ws.send(b'{"id":%d,' % rid + body)

        def on_message(ws: WebSocket, payload: bytes) -> None:
            now = time.perf_counter()
            if check:  # the verification request before 'ready'
                check.pop().set_result(payload)
                return
            reply = orjson.loads(payload)
            t0 = ws.tag.pop(reply.get("id"), None)
            if t0 is None:
                return
            if not isinstance(t0, float):  # the warm-up request of warm_sockets
                if not t0.done():
                    t0.set_result(None)
                return
            in_flight[0] -= 1
            if "error" in reply:
                counts["errors"] += 1
                if not first_error:
                    first_error.append(str(reply["error"])[:200])
            elif t0 >= window[0] and now <= window[1]:
                latencies.append(now - t0)
            if now < window[1] and not self.stop.is_set():
                send(ws)
            elif in_flight[0] == 0:
                done.set()

        opened = await self.open_many(spec["connections"], self.first, on_message)
        for ws in opened:
            ws.tag = {}
        verify: dict[str, Any] = {}
        if opened:
            waiter = loop.create_future()
            check.append(waiter)
            opened[0].send(b'{"id":0,' + body)
            try:
                reply = orjson.loads(await asyncio.wait_for(waiter, 30))
                data = reply.get("data")
                verify = {"error": reply.get("error"), "type": type(data).__name__,
                          "rows": len(data) if isinstance(data, list | dict) else None,
                          "data": data}
            except TimeoutError:
                verify = {"error": "no reply to the verification request"}
            check.clear()
        warmed = await self.warm_sockets(opened, body) if not verify.get("error") else 0
        self.ready(verify=verify, warmed=warmed)
        await self.go.wait()
        if self.end.is_set():
            return
        t_go = time.perf_counter()
        window[:] = [t_go + warmup, t_go + warmup + duration]
        cpu: dict[str, float] = {}
        loop.call_later(warmup, lambda: cpu.setdefault("start", cpu_seconds()))
        loop.call_later(warmup + duration, lambda: cpu.setdefault("end", cpu_seconds()))
        for ws in opened:
            for _ in range(depth):
                send(ws)
        if not opened:
            done.set()
        end_wait = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([asyncio.ensure_future(done.wait()), end_wait],
                           timeout=warmup + duration + float(spec.get("drain", 10.0)),
                           return_when=asyncio.FIRST_COMPLETED)
        cpu.setdefault("start", cpu_seconds())
        cpu.setdefault("end", cpu_seconds())
        emit("result", completed=len(latencies), errors=counts["errors"],
             first_error=first_error[0] if first_error else None, sent=next_id[0],
             unanswered=in_flight[0], duration=duration, latencies_ms=sample(latencies),
             cpu_s=cpu["end"] - cpu["start"], connections=len(opened))

    async def warm_sockets(self, opened: list[WebSocket], body: bytes) -> int:
        """One request on every socket before ``ready`` (answered or not within
        ``warm_timeout``): a server that opens a database connection per socket on its
        first request (the Node server) does so here, not in the measured window."""
        if not opened or not self.spec.get("warm_all", True):
            return 0
        loop = asyncio.get_running_loop()
        waiters = []
        for ws in opened:
            waiter = loop.create_future()
            waiters.append(waiter)
            ws.tag[-1] = waiter
            ws.send(b'{"id":-1,' + body)
        done, _ = await asyncio.wait(waiters, timeout=float(self.spec.get("warm_timeout", 60)))
        for ws in opened:
            ws.tag.pop(-1, None)
        return len(done)

    async def mode_notify(self) -> None:
        spec = self.spec
        expected = [0]  # notifications due in all: set once the sockets are open
        phases: dict[str, list[float]] = {}
        first_last: dict[str, list[float]] = {}
        got = [0]
        done = asyncio.Event()
        other = Counter()
        rounds: dict[Any, list[float]] = {}  # paced latencies by notification
        first_burst: list[float] = []  # when the first burst notification was read
        # (time, CPU seconds) whenever the sockets went quiet: the generator's CPU for the
        # burst counts from the last quiet moment before it (parsing is done afterwards)
        quiet: list[tuple[float, float]] = []

        def on_message(ws: WebSocket, payload: bytes) -> None:
            now = ws.received_at or time.time()
            msg = orjson.loads(payload)
            if msg.get("action") != "notify":
                other["non_notify"] += 1
                return
            data = msg.get("data")
            try:
                phase, sent = data["p"], data["t"]
            except (TypeError, KeyError):
                other["bad_payload"] += 1
                return
            if phase == "burst" and not first_burst:
                first_burst.append(now)
            phases.setdefault(phase, []).append(now - sent)
            if phase == "paced":
                rounds.setdefault(data.get("k"), []).append(now - sent)
            span = first_last.setdefault(phase, [now, now])
            if now > span[1]:
                span[1] = now
            got[0] += 1
            if got[0] >= expected[0]:
                done.set()

        listen = keys.listen_param([spec["channel"]])
        opened = await self.open_many(spec["connections"], self.first, on_message, listen)
        expected[0] = int(spec["expected"]) * len(opened)
        self.ready()
        await self.go.wait()
        cpu0 = cpu_seconds()
        if expected[0]:
            await receive_raw(opened, lambda: done.is_set() or self.stop.is_set(),
                              on_quiet=lambda: quiet.append((time.time(), cpu_seconds())))
        if wsclient.unstamped_reads[0]:
            other["unstamped_reads"] = wsclient.unstamped_reads[0]
        burst_cpu = [c for t, c in quiet if first_burst and t <= first_burst[0]][-1:]
        emit("result", received=got[0], expected=expected[0], other=dict(other),
             phases={p: {"count": len(v), "latencies_ms": sample(v),
                         "first": first_last[p][0], "last": first_last[p][1]}
                     for p, v in phases.items()},
             rounds={str(k): sample(v) for k, v in sorted(rounds.items(), key=str)},
             cpu_s=cpu_seconds() - cpu0, connections=len(opened),
             burst_cpu_s=cpu_seconds() - burst_cpu[0] if burst_cpu else None)

    async def mode_handshake(self) -> None:
        spec = self.spec
        assert self.signer is not None
        signer = self.signer
        workers = int(spec.get("workers", 1))
        warmup = float(spec.get("warmup", 0.5))
        duration = float(spec["duration"])
        each = bool(spec.get("clientinfo_each"))
        pool = [signer.target(self.first + i) for i in range(0 if each else spec["presign"])]
        pool.reverse()
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        counter = [self.first + len(pool)]
        window = [0.0, 0.0]

        async def worker() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= window[1] or self.stop.is_set():
                    return
                counter[0] += 1
                try:
                    if each:
                        info = await get_json(self.host, self.port, "/clientinfo",
                                              tls=self.tls)
                        target = signer.target(counter[0], date=info["date"], ip=info["ip"])
                    else:
                        target = pool.pop() if pool else signer.target(counter[0])
                    ws = await connect(self.host, self.port, target, timeout=self.timeout,
                                       tls=self.tls)
                    t1 = time.perf_counter()
                    ws.close()
                    await asyncio.wait_for(ws.closed, 10)
                except HandshakeError as exc:
                    errors[f"{exc.status} {exc.body[:60]}"] += 1
                    continue
                except (OSError, TimeoutError) as exc:
                    errors[type(exc).__name__ + " " + str(exc)[:60]] += 1
                    continue
                t2 = time.perf_counter()
                if t0 >= window[0] and t2 <= window[1]:
                    latencies.append(t1 - t0)

        self.ready(presigned=len(pool))
        await self.go.wait()
        if self.end.is_set():
            return
        loop = asyncio.get_running_loop()
        t_go = time.perf_counter()
        window[:] = [t_go + warmup, t_go + warmup + duration]
        cpu: dict[str, float] = {}
        loop.call_later(warmup, lambda: cpu.setdefault("start", cpu_seconds()))
        loop.call_later(warmup + duration, lambda: cpu.setdefault("end", cpu_seconds()))
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))),
                               warmup + duration + 30)
        cpu.setdefault("start", cpu_seconds())
        cpu.setdefault("end", cpu_seconds())
        emit("result", completed=len(latencies), errors=dict(errors), duration=duration,
             latencies_ms=sample(latencies), cpu_s=cpu["end"] - cpu["start"],
             presign_left=len(pool), workers=workers)

    async def mode_idle(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        replies: list[asyncio.Future] = []

        def on_message(ws: WebSocket, payload: bytes) -> None:
            if ws.tag is not None and not ws.tag.done():
                ws.tag.set_result(payload)

        warm = await self.open_many(spec.get("warm", 0), self.first, on_message)
        for ws in warm:
            ws.tag = loop.create_future()
            replies.append(ws.tag)
            ws.send(b'{"id":1,"action":"tuple","view":"base.curr_eid()"}')
        if replies:
            await asyncio.wait(replies, timeout=30)
        self.ready(warm_replies=sum(1 for r in replies if r.done()))
        await self.go.wait()
        if self.end.is_set():
            return
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        self.open_errors.clear()
        opened = await self.open_many(spec["connections"], self.first + len(warm))
        emit("result", opened=len(opened), open_errors=dict(self.open_errors),
             seconds=time.perf_counter() - t0, cpu_s=cpu_seconds() - cpu0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.loadgen SPEC_JSON", file=sys.stderr)
        return 2
    text = argv[0]
    if not text.lstrip().startswith("{"):
        with open(text, encoding="utf-8") as handle:
            text = handle.read()
    spec = orjson.loads(text)
    raise_fd_limit()
    try:
        asyncio.run(asyncio.wait_for(LoadGen(spec).run(), spec.get("max_seconds", 600)))
    except TimeoutError:
        emit("error", message="loadgen ran out of time")
        return 1
    except Exception as exc:  # reported to the runner, which kills us anyway
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
