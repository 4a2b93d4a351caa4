"""Login credentials, pure functions (PROTOCOL.md §2–§4): query parsing, lenient
base64, the signed message, P-521/SHA-384 signature checks, key lookup, dates,
and the replay cache. No I/O; every function here is unit-testable.
"""

from __future__ import annotations

import base64
import binascii
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
MAX_QUERY_BYTES = 16384


class CredentialError(ValueError):
    """A credential cannot be used; ``reason`` is a short text for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- query string ---------------------------------------------------------------

def parse_query(query: str) -> dict[str, str]:
    """The query as Node's ``Url.parse(url, true)`` reads it (``%XX`` and ``+`` decoded,
    a key without ``=`` is ``""``), except that a repeated key is refused."""
    if len(query) > MAX_QUERY_BYTES:
        raise CredentialError("query string too long")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                          errors="strict", max_num_fields=64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialError(f"malformed query string: {exc}") from None
    for key, value in pairs:
        if key in params:
            raise CredentialError(f"repeated query parameter {key!r}")
        params[key] = value
    return params


_B64_CHARS = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")


def b64decode_lenient(text: str) -> bytes:
    """Standard or URL alphabet (mixed), padding optional; anything else is refused."""
    if not _B64_CHARS.match(text):
        raise CredentialError("not base64")
    body = text.rstrip("=").replace("+", "-").replace("/", "_")
    if len(body) % 4 == 1:
        raise CredentialError("not base64 (bad length)")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise CredentialError("not base64") from None


def b64url(data: bytes) -> str:
    """base64url without padding, as the JS client writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode_json(text: str, what: str) -> Any:
    try:
        raw = b64decode_lenient(text).decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError(f"{what}: not UTF-8") from None
    try:
        return raw, json.loads(raw)
    except ValueError:
        raise CredentialError(f"{what}: not JSON") from None


def decode_listen(db: str | None) -> tuple[str, ...]:
    """The ``db`` parameter: base64 of a JSON list of channel names (or one name).
    Anything else is refused before the socket is accepted (D11)."""
    if not db:
        return ()
    _, value = _decode_json(db, "db")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_CHANNELS:
        raise CredentialError(f"db: expected a list of at most {MAX_CHANNELS} channel names")
    channels: list[str] = []
    for name in value:
        if not isinstance(name, str) or not name or "\x00" in name \
                or len(name.encode("utf-8")) > 63:
            raise CredentialError("db: channel names must be strings of 1 to 63 bytes")
        if name not in channels:
            channels.append(name)
    return tuple(channels)


# -- keys ---------------------------------------------------------------------------

def _coordinate(value: Any) -> int:
    if not isinstance(value, str):
        raise CredentialError("JWK coordinate is not a string")
    raw = b64decode_lenient(value)
    if len(raw) != P521_COORDINATE_BYTES:
        raise CredentialError("JWK coordinate has the wrong length")
    return int.from_bytes(raw, "big")


@lru_cache(maxsize=4096)
def _public_key(x: str, y: str) -> ec.EllipticCurvePublicKey:
    """Import (and check the point of) a P-521 key; cached because it is the slow part."""
    try:
        numbers = ec.EllipticCurvePublicNumbers(_coordinate(x), _coordinate(y), ec.SECP521R1())
        return numbers.public_key()
    except ValueError:
        raise CredentialError("JWK is not a point on P-521") from None


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-521":
        raise CredentialError("not a P-521 EC JWK")
    x, y = jwk.get("x"), jwk.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        raise CredentialError("JWK without x/y")
    return _public_key(x, y)


def decode_public_jwk(pub: str) -> tuple[str, dict]:
    """The ``pub`` parameter → (JSON text as sent, parsed JWK); must be a public P-521
    key (D23: checked before ``token_valid`` stores it)."""
    text, jwk = _decode_json(pub, "pub")
    if not isinstance(jwk, dict):
        raise CredentialError("pub: not a JSON object")
    if "d" in jwk:
        raise CredentialError("pub: contains a private key")
    public_key_from_jwk(jwk)
    return text, jwk


def candidate_keys(conn_pub: Any) -> list[Mapping[str, Any]]:
    """Where a user's key may be stored (§4.3): ``websocket``, ``default``, the value."""
    if isinstance(conn_pub, str):
        try:
            conn_pub = json.loads(conn_pub)
        except ValueError:
            return []
    if not isinstance(conn_pub, Mapping):
        return []
    found = [conn_pub[k] for k in ("websocket", "default") if isinstance(conn_pub.get(k), Mapping)]
    if "kty" in conn_pub:
        found.append(conn_pub)
    return found


def verify_signature(jwk: Mapping[str, Any], message: bytes, sign_b64: str) -> bool:
    """ECDSA P-521/SHA-384 over ``message`` with a raw r‖s signature; never raises."""
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
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
        return True
    except (InvalidSignature, ValueError):
        return False


def verifying_key(conn_pub: Any, message: bytes, sign_b64: str) -> Mapping[str, Any] | None:
    """The stored key (of the candidates) that verifies the signature, or None."""
    for jwk in candidate_keys(conn_pub):
        if verify_signature(jwk, message, sign_b64):
            return jwk
    return None


def verify_any(conn_pub: Any, message: bytes, sign_b64: str) -> bool:
    return verifying_key(conn_pub, message, sign_b64) is not None


# -- the signed message and dates -------------------------------------------------------

def signed_message(ip: str, cookie: str | None, user_agent: str | None, date: str) -> bytes:
    """What the client signs: compact JSON of ip, cookie, userAgent, date in this order,
    absent members omitted; byte-identical to JS ``JSON.stringify``."""
    fields = {"ip": ip, "cookie": cookie, "userAgent": user_agent, "date": date}
    return json.dumps({k: v for k, v in fields.items() if v is not None},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def js_date(moment: datetime) -> str:
    """JS ``Date#toJSON``: UTC, exactly three fraction digits, ``Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")


def parse_client_date(date: str) -> datetime:
    """An ISO 8601 date-time with an explicit zone; anything else is refused (D5)."""
    if not isinstance(date, str) or not _ISO.match(date):
        raise CredentialError("date is not an ISO 8601 date-time with zone")
    try:
        return datetime.fromisoformat(date.replace("Z", "+00:00"))
    except ValueError:
        raise CredentialError("date is not a valid date-time") from None


def check_date_window(date: datetime, now: datetime, max_delta_seconds: float) -> bool:
    """|now − date| ≤ max (inclusive); a max of 0 disables the check (as the JS server)."""
    if not max_delta_seconds:
        return True
    return abs((now - date).total_seconds()) <= max_delta_seconds


def clientinfo_body(ip: str, real: str | None, cookie: str | None, user_agent: str | None,
                    now: datetime) -> bytes:
    """The ``/clientinfo`` JSON (§2): absent values are absent members."""
    fields = {"ip": ip, "real": real, "cookie": cookie, "userAgent": user_agent,
              "date": js_date(now)}
    return json.dumps({k: v for k, v in fields.items() if v is not None},
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def render_peer_ip(host: str, family_is_ipv6: bool, style: str = "node") -> str:
    """IPv4 peers as Node on a dual-stack socket shows them (``::ffff:a.b.c.d``) or plain."""
    mapped = host.lower().startswith("::ffff:") and "." in host
    if style == "plain":
        return host[7:] if mapped else host
    if not family_is_ipv6 and not mapped:
        return "::ffff:" + host
    return host


# -- replays ------------------------------------------------------------------------------

class ReplayCache:
    """Accepted ``(user, sign)`` pairs, remembered for ``ttl`` seconds (D2).

    Memory is bounded: past ``max_entries`` the oldest entries are dropped first
    (they are the closest to leaving the date window anyway, and the window check
    still refuses anything older than ``ttl / 2``)."""

    def __init__(self, ttl: float, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def seen_or_add(self, user: str, sign: str, now: float) -> bool:
        """True if this signature was accepted before (a replay); else remember it.

        Keyed by the decoded ``r`` half: another base64 spelling of the same bytes,
        or the malleable twin ``(r, n − s)`` of an ECDSA signature, is the same replay.
        """
        while self._seen:
            key, stamp = next(iter(self._seen.items()))
            if stamp > now - self.ttl:
                break
            del self._seen[key]
        try:
            key = (user, b64decode_lenient(sign)[:P521_COORDINATE_BYTES].hex())
        except CredentialError:
            key = (user, sign)
        if key in self._seen:
            return True
        self._seen[key] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen)
