"""Login credentials, pure functions (docs/protocol.md, 2 "Transport and URL" to
4 "Login"): query parsing, lenient base64, the signed message, P-521/SHA-384 signature
checks, key lookup, dates, and the replay cache. No I/O and no clock reads: every
function here is unit-testable, and the WebSocket handshake and ``/clientinfo`` both
call it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

P521_COORDINATE_BYTES = 66
SIGNATURE_BYTES = 2 * P521_COORDINATE_BYTES
MAX_CHANNELS = 64
MAX_CHANNEL_BYTES = 63           # PostgreSQL identifiers (NAMEDATALEN − 1)
MAX_QUERY_BYTES = 16384
MAX_QUERY_FIELDS = 64
MAX_DATE_CHARS = 64
PUBLIC_KEY_CACHE_SIZE = 4096

__all__ = [
    "CredentialError", "ReplayCache", "b64decode_lenient", "b64url", "candidate_keys",
    "check_channels", "check_date_window", "clientinfo_body", "decode_listen",
    "decode_public_jwk", "js_date", "p2p_signed_message", "parse_client_date",
    "parse_query", "public_key_from_jwk", "render_peer_ip", "replay_ttl",
    "signature_digest", "signed_message", "verify_any", "verify_signature", "verifying_key",
]


class CredentialError(ValueError):
    """A credential cannot be used; ``reason`` is a short text for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- query string ---------------------------------------------------------------------

def parse_query(query: str) -> dict[str, str]:
    """The query as Node's ``Url.parse(url, true)`` reads it (``%XX`` and ``+`` decoded,
    a key without ``=`` is ``""``, an empty key is kept), except that a repeated key, an
    escape that is not UTF-8, or more than :data:`MAX_QUERY_FIELDS` fields are refused.

    Node turns a repeated key into an array, which the JS server then mishandles
    (docs/protocol.md, 2 "Transport and URL"); refusing is the only safe reading.
    Malformed escapes such as ``%zz`` stay literal, as in Node.
    """
    if not isinstance(query, str):
        raise CredentialError("query string is not text")
    if len(query) > MAX_QUERY_BYTES:
        raise CredentialError("query string too long")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                          errors="strict", max_num_fields=MAX_QUERY_FIELDS)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialError(f"malformed query string: {exc}") from None
    for key, value in pairs:
        if key in params:
            raise CredentialError(f"repeated query parameter {key[:40]!r}")
        params[key] = value
    return params


# -- base64 -------------------------------------------------------------------------

_B64_TEXT = re.compile(r"[A-Za-z0-9+/_-]*={0,2}", re.ASCII)
_TO_URL_ALPHABET = str.maketrans("+/", "-_")


def b64decode_lenient(text: str) -> bytes:
    """Standard or URL alphabet (even mixed), padding optional, as Node decodes it;
    but any other character is refused instead of silently skipped (docs/protocol.md,
    2 "Transport and URL")."""
    if not isinstance(text, str) or not _B64_TEXT.fullmatch(text):
        raise CredentialError("not base64")
    body = text.rstrip("=").translate(_TO_URL_ALPHABET)
    if len(body) % 4 == 1:       # no byte string encodes to this length
        raise CredentialError("not base64 (bad length)")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise CredentialError("not base64") from None


def b64url(data: bytes) -> str:
    """base64url without padding, as the JS client writes every binary value."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_json(text: str | None, what: str) -> tuple[str, Any]:
    """base64 → UTF-8 → strict JSON (no NaN/Infinity); (the JSON text, the value)."""
    try:
        raw = b64decode_lenient(text or "").decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{what}: not UTF-8") from None
    except CredentialError as exc:
        raise CredentialError(f"{what}: {exc.reason}") from None
    try:
        return raw, json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise CredentialError(f"{what}: not JSON") from None


def decode_listen(db: str | None) -> tuple[str, ...]:
    """The ``db`` parameter: base64 of a JSON list of channel names (or of one name).

    Absent or empty means no channels; the list is checked by :func:`check_channels`,
    so that the upgrade can be answered 400 before it is accepted (D11).
    """
    if not db:
        return ()
    _, value = _decode_json(db, "db")
    return check_channels(value, "db")


def check_channels(value: Any, what: str) -> tuple[str, ...]:
    """A decoded list of channel names (``db``'s, or a libp2p login's ``listen``); a
    single string is a list of one. Anything but non-empty strings of at most 63 UTF-8
    bytes (no NUL), at most :data:`MAX_CHANNELS` of them, is refused. Duplicates are
    dropped, first occurrence kept."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_CHANNELS:
        raise CredentialError(f"{what}: expected a list of at most {MAX_CHANNELS} "
                              "channel names")
    channels: list[str] = []
    for name in value:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise CredentialError(f"{what}: channel names must be non-empty strings")
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:   # a lone surrogate from a \\udXXX escape
            raise CredentialError(f"{what}: channel name is not valid Unicode") from None
        if size > MAX_CHANNEL_BYTES:
            raise CredentialError(f"{what}: channel names are at most {MAX_CHANNEL_BYTES} "
                                  "bytes")
        if name not in channels:
            channels.append(name)
    return tuple(channels)


# -- keys -------------------------------------------------------------------------------

def _coordinate(value: Any) -> int:
    if not isinstance(value, str):
        raise CredentialError("JWK coordinate is not a string")
    raw = b64decode_lenient(value)
    if len(raw) != P521_COORDINATE_BYTES:
        raise CredentialError("JWK coordinate is not 66 bytes")
    return int.from_bytes(raw, "big")


@lru_cache(maxsize=PUBLIC_KEY_CACHE_SIZE)
def _public_key(x: str, y: str) -> ec.EllipticCurvePublicKey:
    """Import a P-521 public key, checking that (x, y) is on the curve.

    Cached (a bounded LRU keyed by the coordinate strings) because the same stored
    keys come back on every login and the point check is the slow part. Failures
    raise and so are not cached.
    """
    numbers = ec.EllipticCurvePublicNumbers(_coordinate(x), _coordinate(y), ec.SECP521R1())
    try:
        return numbers.public_key()
    except ValueError:
        raise CredentialError("JWK is not a point on P-521") from None


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """The public key of a JWK with ``kty`` EC and ``crv`` P-521 (other members ignored,
    as docs/protocol.md, 4.3 "Ticket login" says of ``key_ops``, ``ext`` and ``alg``; here
    even ``d`` plays no part)."""
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-521":
        raise CredentialError("not a P-521 EC JWK")
    x, y = jwk.get("x"), jwk.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        raise CredentialError("JWK without x/y")
    return _public_key(x, y)


def decode_public_jwk(pub: str) -> tuple[str, dict[str, Any]]:
    """The ``pub`` parameter → (the JSON text exactly as sent, the parsed JWK).

    It must be a *public* P-521 key whose point is on the curve: D23 (the JS server
    stores anything, and a bad stored key later hangs key logins). The text is what
    goes to ``base.token_valid``, unchanged, as the JS server passes it.
    """
    text, jwk = _decode_json(pub, "pub")
    if not isinstance(jwk, dict):
        raise CredentialError("pub: not a JSON object")
    if "d" in jwk:
        raise CredentialError("pub: contains a private key")
    try:
        public_key_from_jwk(jwk)
    except CredentialError as exc:
        raise CredentialError(f"pub: {exc.reason}") from None
    return text, jwk


def candidate_keys(conn_pub: object) -> list[dict[str, Any]]:
    """The keys a stored ``conn_pub`` may hold, in the order to try them
    (docs/protocol.md, 4.4 "Key login" step 5; D24): its ``websocket`` member, its
    ``default`` member (each only if an object), then the value itself if it has
    ``kty``. ``conn_pub`` may come as a dict or as JSON text."""
    if isinstance(conn_pub, (str, bytes)):
        try:
            conn_pub = json.loads(conn_pub)
        except (ValueError, RecursionError):
            return []
    if not isinstance(conn_pub, Mapping):
        return []
    found = [conn_pub[k] for k in ("websocket", "default") if isinstance(conn_pub.get(k), Mapping)]
    if "kty" in conn_pub:
        found.append(conn_pub)
    return found


def verify_signature(jwk: Mapping[str, Any], message: bytes, sign_b64: str) -> bool:
    """ECDSA P-521/SHA-384 over ``message`` with a raw ``r‖s`` signature (132 bytes,
    base64 in either alphabet). Every failure, malformed input included, is False."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        return False
    try:
        key = public_key_from_jwk(jwk)
        raw = b64decode_lenient(sign_b64)
    except CredentialError:
        return False
    if len(raw) != SIGNATURE_BYTES:
        return False
    r = int.from_bytes(raw[:P521_COORDINATE_BYTES], "big")
    s = int.from_bytes(raw[P521_COORDINATE_BYTES:], "big")
    try:
        key.verify(encode_dss_signature(r, s), bytes(message), ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verifying_key(conn_pub: object, message: bytes, sign_b64: str) -> dict[str, Any] | None:
    """The first candidate key of ``conn_pub`` that verifies the signature, or None."""
    for jwk in candidate_keys(conn_pub):
        if verify_signature(jwk, message, sign_b64):
            return jwk
    return None


def verify_any(conn_pub: object, message: bytes, sign_b64: str) -> bool:
    """True when any candidate key of ``conn_pub`` verifies the signature."""
    return verifying_key(conn_pub, message, sign_b64) is not None


# -- the signed message, /clientinfo and dates -----------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def _js_stringify(members: dict[str, str | None]) -> bytes:
    """UTF-8 of ``JSON.stringify`` of an object of strings, undefined members omitted.

    ``json.dumps`` with these options escapes exactly as JS does (``"``, ``\\``, C0
    controls with the short forms, lowercase ``\\u00xx``; DEL, U+2028/9 and non-ASCII
    literal). The one difference, a lone surrogate, JS escapes as ``\\udxxx``; Python
    would write it raw and then fail to encode it, so it is escaped here the same way.
    """
    text = json.dumps({k: v for k, v in members.items() if v is not None},
                      separators=(",", ":"), ensure_ascii=False)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8")


def signed_message(ip: str, cookie: str | None, user_agent: str | None, date: str) -> bytes:
    """What a key login signs (docs/protocol.md, 4.4 "Key login", client step 2):
    compact JSON of ``ip``, ``cookie``, ``userAgent``, ``date`` in this order; a missing
    header (None) is omitted, an empty one kept as ``""``. Byte-identical to the
    client's ``JSON.stringify``."""
    return _js_stringify({"ip": ip, "cookie": cookie, "userAgent": user_agent, "date": date})


#: the protocol a libp2p key login names in what it signs
P2P_PROTOCOL = "/wyseman/1.0.0"


def p2p_signed_message(server_peer: str, client_peer: str, date: str) -> bytes:
    """What a key login on a libp2p stream signs (docs/protocol.md, 15.3): compact JSON
    of ``protocol`` (``/wyseman/1.0.0``), ``server`` and ``client`` (the two peer ids,
    base58, as the secure channel proved them) and ``date``, in this order. The peer
    ids bind the signature to this pair of ends: a login overheard or replayed from
    another peer (or to another server) does not verify, and the replay cache refuses
    it again from the same one."""
    return _js_stringify({"protocol": P2P_PROTOCOL, "server": server_peer,
                          "client": client_peer, "date": date})


def js_date(moment: datetime) -> str:
    """JS ``Date#toJSON``: UTC, exactly three fraction digits (truncated), ``Z``.
    A naive ``moment`` is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def clientinfo_body(ip: str, real: str | None, cookie: str | None, user_agent: str | None,
                    now: datetime) -> bytes:
    """The ``GET /clientinfo`` body (docs/protocol.md, 3 "GET /clientinfo"): compact
    JSON with members ``ip``, ``real``, ``cookie``, ``userAgent``, ``date`` in this
    order; absent values are absent members; ``date`` is ``now`` as ``Date#toJSON``
    writes it."""
    return _js_stringify({"ip": ip, "real": real, "cookie": cookie, "userAgent": user_agent,
                          "date": js_date(now)})


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                       r"(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})", re.ASCII)


def parse_client_date(date: str) -> datetime:
    """The ``date`` parameter as an aware UTC datetime.

    Accepted: what ``Date#toJSON`` writes (``2025-05-01T12:00:00.000Z``) and the ISO
    8601 variants with 0–6 fraction digits and an explicit zone (``Z`` or ``±HH:MM``).
    Everything else is refused: JS would read it as NaN (which skips the window check,
    D5) or as local time.
    """
    if not isinstance(date, str) or len(date) > MAX_DATE_CHARS or not _ISO_DATE.fullmatch(date):
        raise CredentialError("date is not an ISO 8601 date-time with a zone")
    try:
        moment = datetime.fromisoformat(date[:-1] + "+00:00" if date.endswith("Z") else date)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise CredentialError("date is not a valid date-time") from None


def check_date_window(date: datetime, now: datetime, max_delta_seconds: float) -> bool:
    """|now − date| ≤ max (the edge passes; future dates pass within the window).

    A max of 0 disables the check, as ``delta: 0`` does in the JS server; a negative
    max refuses everything, as there.
    """
    if max_delta_seconds == 0:
        return True
    return abs((now - date).total_seconds()) <= max_delta_seconds


def render_peer_ip(host: str, family_is_ipv6: bool, style: str = "node") -> str:
    """The client address as ``/clientinfo`` reports it and the signed message holds it.

    ``"node"`` (the default) renders an IPv4 peer as Node does on a dual-stack socket,
    ``::ffff:a.b.c.d``, so signatures made against a wyclif ``/clientinfo`` still match;
    ``"plain"`` renders IPv4 peers as ``a.b.c.d`` (also when they arrive IPv4-mapped).
    IPv6 peers are left as they are.
    """
    mapped = host[:7].lower() == "::ffff:" and "." in host
    if style == "plain":
        return host[7:] if mapped else host
    if style != "node":
        raise ValueError(f"unknown address style {style!r} (node or plain)")
    if not family_is_ipv6 and not mapped and "." in host:
        return "::ffff:" + host
    return host


# -- replays ---------------------------------------------------------------------------------

NEW, SEEN, FULL = "new", "seen", "full"


def _signature_identity(sign: str) -> bytes:
    """What identifies an ECDSA signature: its ``r`` half. Another base64 spelling of the
    same bytes, or the malleable twin ``(r, n − s)`` that verifies too, is the same
    signature (the same replay)."""
    try:
        return b64decode_lenient(sign)[:P521_COORDINATE_BYTES]
    except CredentialError:
        return sign.encode("utf-8", "surrogatepass")


def replay_ttl(max_delta_seconds: float, unbounded_ttl: float = 3600.0) -> float:
    """How long an accepted signature is remembered for a date window of
    ``max_delta_seconds``: twice the window (a date at one edge still passes at the
    other); with the window disabled (0) signatures never go stale and no finite memory
    stops every replay: ``unbounded_ttl``."""
    return 2 * max_delta_seconds if max_delta_seconds > 0 else unbounded_ttl


def signature_digest(sign: str) -> bytes:
    """SHA-256 of the signature's identity (:func:`_signature_identity`): what the shared
    replay table stores (32 bytes a row, whatever the client sent)."""
    return hashlib.sha256(_signature_identity(sign)).digest()


class ReplayCache:
    """Accepted key-login signatures, remembered for ``ttl`` seconds (D2).

    A signed URL is otherwise reusable for as long as its date is in the window, so
    the server remembers each accepted ``(user, signature)`` for twice the window
    (:meth:`for_window`) and refuses it a second time. The clock is passed in.

    Memory is bounded by ``max_entries``. Expired entries are dropped first; if the
    cache is still full, :meth:`seen_or_add` answers True (refuse the login) and counts
    it in :attr:`full_refusals` instead of forgetting a live entry: forgetting would
    re-open replays, refusing only delays honest logins until entries expire. Only
    signatures that have already verified are added, so filling it takes real keys.
    """

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self.full_refusals = 0
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    @classmethod
    def for_window(cls, max_delta_seconds: float, max_entries: int = 100_000,
                   unbounded_ttl: float = 3600.0) -> ReplayCache:
        """A cache for a date window of ``max_delta_seconds``: ttl = 2 × window. With the
        window disabled (0) signatures never go stale and no finite cache can stop every
        replay; ``unbounded_ttl`` then says how long they are remembered."""
        return cls(replay_ttl(max_delta_seconds, unbounded_ttl), max_entries)

    @staticmethod
    def _key(user: str, sign: str) -> bytes:
        """16-byte digest of the user and the signature's ``r`` half
        (:func:`_signature_identity`)."""
        part = _signature_identity(sign)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(user.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
        digest.update(part)
        return digest.digest()

    def expire(self, now: float) -> None:
        """Drop the entries older than ``ttl`` (oldest first). An entry exactly ``ttl``
        old is kept: the date window's edge is inclusive, so a signature accepted at
        ``date − window`` still passes the window check at ``date + window``."""
        while self._seen:
            key, stamp = next(iter(self._seen.items()))
            if stamp >= now - self.ttl:
                break
            del self._seen[key]

    def seen_or_add(self, user: str, sign: str, now: float) -> bool:
        """True: refuse this login (a replay, or the cache is full). False: it is new
        and is now remembered."""
        return self.check(user, sign, now) != NEW

    def check(self, user: str, sign: str, now: float) -> str:
        """:data:`NEW` (now remembered), :data:`SEEN` (a replay) or :data:`FULL`."""
        return self.check_key(self._key(user, sign), now)

    def check_key(self, key: bytes, now: float) -> str:
        """:meth:`check` for a key from :meth:`key` (how worker processes share one
        cache: they send the key to the supervisor, wyseman.application.workers.supervisor)."""
        self.expire(now)
        if key in self._seen:
            return SEEN
        if len(self._seen) >= self.max_entries:
            self.full_refusals += 1
            return FULL
        self._seen[key] = now
        return NEW

    key = _key

    @property
    def full(self) -> bool:
        return len(self._seen) >= self.max_entries

    def __len__(self) -> int:
        return len(self._seen)
