"""Client-side keys, key files and tickets, in the JS tools' formats (PROTOCOL.md §5).

- Key pairs are P-521 JWKs exactly as WebCrypto exports them.
- Key files are wylib exports ``{"login": {"host", "port", "user", "key"}}`` (one object
  or a list), optionally encrypted like wyseman's ``lib/encrypt.js``: PBKDF2-HMAC-SHA-256
  (8-byte salt, 10000 rounds) → AES-256-GCM (12-byte IV, tag appended), stored as
  ``{"s": salt hex, "i": iv hex, "d": base64(ciphertext‖tag)}``.
- Tickets: the JSON form of wyclif's ``ticket`` tool and its link/web URL forms.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from wyseman.protocol.credentials import (
    P521_COORDINATE_BYTES,
    b64decode_lenient,
    b64url,
    signed_message,
)

__all__ = ["signed_message"]


class KeyFileError(ValueError):
    """A key file or ticket cannot be read (the message says why)."""


# -- key pairs ----------------------------------------------------------------------

def _b64_int(value: int) -> str:
    return b64url(value.to_bytes(P521_COORDINATE_BYTES, "big"))


def generate_private_jwk() -> dict[str, Any]:
    """A new P-521 key pair as the private JWK WebCrypto exports."""
    key = ec.generate_private_key(ec.SECP521R1())
    numbers = key.private_numbers()
    return {"kty": "EC", "crv": "P-521", "x": _b64_int(numbers.public_numbers.x),
            "y": _b64_int(numbers.public_numbers.y), "d": _b64_int(numbers.private_value),
            "key_ops": ["sign"], "ext": True}


def public_jwk(private: Mapping[str, Any]) -> dict[str, Any]:
    """The public half, as WebCrypto exports it."""
    return {"kty": "EC", "crv": "P-521", "x": private["x"], "y": private["y"],
            "key_ops": ["verify"], "ext": True}


def private_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-521" or "d" not in jwk:
        raise KeyFileError("not a private P-521 JWK")
    d = int.from_bytes(b64decode_lenient(jwk["d"]), "big")
    return ec.derive_private_key(d, ec.SECP521R1())


def sign(private: Mapping[str, Any], message: bytes) -> str:
    """base64url (no padding) of the raw r‖s ECDSA P-521/SHA-384 signature."""
    der = private_key(private).sign(message, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return b64url(r.to_bytes(P521_COORDINATE_BYTES, "big") + s.to_bytes(P521_COORDINATE_BYTES,
                                                                        "big"))


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pub_param(public: Mapping[str, Any]) -> str:
    """The ``pub`` URL parameter: base64url of the compact JSON JWK."""
    return b64url(_compact(dict(public)))


def listen_param(channels: Iterable[str]) -> str:
    """The ``db`` URL parameter: base64url of the JSON list of channels."""
    return b64url(_compact(list(channels)))


# -- encryption (wyseman lib/encrypt.js) ------------------------------------------------

def _derive(passphrase: str, salt: bytes) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=10000)
    return kdf.derive(passphrase.encode("utf-8"))


def encrypt_json(value: Any, passphrase: str) -> dict[str, str]:
    salt, iv = os.urandom(8), os.urandom(12)
    data = AESGCM(_derive(passphrase, salt)).encrypt(iv, _compact(value), None)
    return {"s": salt.hex(), "i": iv.hex(), "d": base64.b64encode(data).decode("ascii")}


def is_encrypted(blob: Any) -> bool:
    return isinstance(blob, Mapping) and all(k in blob for k in ("s", "i", "d"))


def decrypt_json(blob: Mapping[str, Any], passphrase: str) -> Any:
    try:
        salt, iv = bytes.fromhex(blob["s"]), bytes.fromhex(blob["i"])
        data = base64.b64decode(blob["d"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise KeyFileError("encrypted key file is damaged") from None
    try:
        plain = AESGCM(_derive(passphrase, salt)).decrypt(iv, data, None)
    except InvalidTag:
        raise KeyFileError("wrong passphrase (or the file is damaged)") from None
    return json.loads(plain)


# -- key files -----------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """One login: where and as whom, and the private key."""

    host: str
    port: int
    user: str
    key: Mapping[str, Any]

    def as_export(self) -> dict[str, Any]:
        return {"login": {"host": self.host, "port": self.port, "user": self.user,
                          "key": dict(self.key)}}


def load_key_file(path: str | os.PathLike[str], passphrase: str | None = None) -> list[Site]:
    try:
        blob = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(f"{path}: not JSON") from None
    if is_encrypted(blob):
        if passphrase is None:
            raise KeyFileError(f"{path}: the key file is encrypted: give the passphrase")
        blob = decrypt_json(blob, passphrase)
    entries = blob if isinstance(blob, list) else [blob]
    sites = []
    for entry in entries:
        login = entry.get("login") if isinstance(entry, Mapping) else None
        if not isinstance(login, Mapping) or not isinstance(login.get("key"), Mapping):
            continue
        sites.append(Site(str(login.get("host", "")), int(login.get("port") or 0),
                          str(login.get("user", "")), login["key"]))
    if not sites:
        raise KeyFileError(f"{path}: no login in this key file")
    return sites


def save_key_file(path: str | os.PathLike[str], sites: Iterable[Site],
                  passphrase: str | None = None) -> None:
    """Write atomically, readable by the owner only (mode 0600)."""
    exports = [site.as_export() for site in sites]
    content: Any = exports[0] if len(exports) == 1 else exports
    if passphrase:
        content = encrypt_json(content, passphrase)
    target = Path(path)
    fd, temp = tempfile.mkstemp(prefix=".wyseman-key-", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(content, out, indent=1)
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# -- tickets -------------------------------------------------------------------------

@dataclass(frozen=True)
class Ticket:
    token: str
    host: str | None
    port: int | None
    user: str | None
    expires: str | None = None


def parse_ticket(text: str) -> Ticket:
    """The JSON form ``{"ticket": {...}}`` or a link/web URL with ``token=…&user=…``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            raise KeyFileError("ticket: not JSON") from None
        ticket = body.get("ticket") if isinstance(body, Mapping) else None
        if not isinstance(ticket, Mapping) or not ticket.get("token"):
            raise KeyFileError("ticket: no ticket.token")
        port = ticket.get("port")
        return Ticket(str(ticket["token"]), ticket.get("host"),
                      int(port) if port not in (None, "") else None, ticket.get("user"),
                      ticket.get("expires"))
    query = parse_qs(urlsplit(text).query)
    token = (query.get("token") or [""])[0]
    if not token:
        raise KeyFileError("ticket: neither JSON nor a link with token=")
    port = (query.get("port") or [""])[0]
    return Ticket(token, (query.get("host") or [None])[0], int(port) if port else None,
                  (query.get("user") or [None])[0])
