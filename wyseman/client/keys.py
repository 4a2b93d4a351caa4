"""Client-side keys, key files and tickets, in the JS tools' formats (docs/protocol.md,
4.3 "Ticket login", 4.4 "Key login").

- Key pairs are P-521 JWKs exactly as WebCrypto (Node 20) exports them, member order
  included: ``key_ops, ext, kty, x, y, crv[, d]``; coordinates are 66-byte big-endian
  base64url without padding.
- ``sign`` makes what the JS client sends as ``sign``: base64url of the raw ``r‖s``.
- Key files are wylib exports ``{"login": {"host", "port", "user", "key"}}`` (one
  object, or a list for several sites), optionally encrypted as wyseman's
  ``lib/encrypt.js`` does: PBKDF2-HMAC-SHA-256 (8-byte salt, 10000 rounds, 256 bits)
  → AES-256-GCM (12-byte IV, tag appended), stored as
  ``{"s": salt hex, "i": iv hex, "d": std base64(ciphertext‖tag)}``.
- Tickets: the JSON form of wyclif's ``ticket`` tool and its link/web URL forms
  (docs/protocol.md, 4.3 "Ticket login").
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from wyseman.auth.credentials import (
    P521_COORDINATE_BYTES,
    CredentialError,
    b64decode_lenient,
    b64url,
    js_date,
    p2p_signed_message,
    public_key_from_jwk,
    signed_message,
)

__all__ = [
    "KeyFileError", "Site", "Ticket", "decrypt_json", "encrypt_json", "export_private_jwk",
    "export_public_jwk", "generate_key_pair", "generate_private_jwk", "import_private_jwk",
    "import_public_jwk", "is_encrypted", "listen_param", "load_key_file", "multiaddrs",
    "parse_key_file", "p2p_login", "parse_ticket", "private_key", "pub_param", "public_jwk",
    "save_key_file", "sign", "signed_message",
]

PBKDF2_ITERATIONS = 10000
SALT_BYTES = 8
IV_BYTES = 12


class KeyFileError(ValueError):
    """A key, key file or ticket cannot be used (the message says why)."""


# -- key pairs (WebCrypto JWK) -----------------------------------------------------------

def _b64_int(value: int) -> str:
    return b64url(value.to_bytes(P521_COORDINATE_BYTES, "big"))


def _check_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key.curve, ec.SECP521R1):
        raise KeyFileError(f"not a P-521 key (curve {key.curve.name})")


def export_public_jwk(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey
                      ) -> dict[str, Any]:
    """The public JWK as WebCrypto exports it (``key_ops: ["verify"]``)."""
    _check_curve(key)
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    numbers = public.public_numbers()
    return {"key_ops": ["verify"], "ext": True, "kty": "EC", "x": _b64_int(numbers.x),
            "y": _b64_int(numbers.y), "crv": "P-521"}


def export_private_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The private JWK as WebCrypto exports it (``key_ops: ["sign"]``, with ``d``)."""
    _check_curve(key)
    numbers = key.private_numbers()
    return {"key_ops": ["sign"], "ext": True, "kty": "EC",
            "x": _b64_int(numbers.public_numbers.x), "y": _b64_int(numbers.public_numbers.y),
            "crv": "P-521", "d": _b64_int(numbers.private_value)}


def generate_private_jwk() -> dict[str, Any]:
    """A new P-521 key pair, as the private JWK (which holds the public part too)."""
    return export_private_jwk(ec.generate_private_key(ec.SECP521R1()))


def generate_key_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """A new P-521 key pair as (private JWK, public JWK)."""
    private = generate_private_jwk()
    return private, public_jwk(private)


def public_jwk(jwk: Mapping[str, Any] | ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey
               ) -> dict[str, Any]:
    """The public JWK (WebCrypto form) of a private JWK, a public JWK or a key object."""
    if isinstance(jwk, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return export_public_jwk(jwk)
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-521":
        raise KeyFileError("not a P-521 EC JWK")
    return {"key_ops": ["verify"], "ext": True, "kty": "EC", "x": jwk.get("x"),
            "y": jwk.get("y"), "crv": "P-521"}


def import_public_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """A P-521 public key from its JWK (the point is checked to be on the curve)."""
    try:
        return public_key_from_jwk(jwk)
    except CredentialError as exc:
        raise KeyFileError(exc.reason) from None


def import_private_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    """A P-521 private key from its JWK. Like WebCrypto's import, ``x``/``y`` must be
    the public point of ``d``; ``key_ops`` and ``ext`` are not checked."""
    if not isinstance(jwk, Mapping):
        raise KeyFileError("the key is not a JWK object")
    if jwk.get("kty") == "RSA":
        raise KeyFileError("an RSA key (made before wyseman 1.1.9) cannot log in: "
                           "get a new ticket")
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-521" or not isinstance(jwk.get("d"), str):
        raise KeyFileError("not a private P-521 JWK")
    try:
        raw = b64decode_lenient(jwk["d"])
    except CredentialError:
        raise KeyFileError("private JWK: d is not base64") from None
    if len(raw) != P521_COORDINATE_BYTES:
        raise KeyFileError("private JWK: d is not 66 bytes")
    try:
        key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP521R1())
    except ValueError:
        raise KeyFileError("private JWK: d is out of range") from None
    numbers = key.public_key().public_numbers()
    if (jwk.get("x"), jwk.get("y")) != (_b64_int(numbers.x), _b64_int(numbers.y)):
        # allow other base64 spellings of the right coordinates
        try:
            x, y = (int.from_bytes(b64decode_lenient(jwk[k]), "big") for k in ("x", "y"))
        except (CredentialError, KeyError, TypeError):
            raise KeyFileError("private JWK: x/y are not base64") from None
        if (x, y) != (numbers.x, numbers.y):
            raise KeyFileError("private JWK: x/y do not belong to d")
    return key


#: The name the rest of the code base uses.
private_key = import_private_jwk


def sign(private: Mapping[str, Any] | ec.EllipticCurvePrivateKey, message: bytes) -> str:
    """What the JS client sends as ``sign``: base64url (no padding) of the raw 132-byte
    ``r‖s`` ECDSA P-521/SHA-384 signature of ``message`` (IEEE P1363, not DER)."""
    if isinstance(private, ec.EllipticCurvePrivateKey):
        _check_curve(private)
        key = private
    else:
        key = import_private_jwk(private)
    r, s = decode_dss_signature(key.sign(bytes(message), ec.ECDSA(hashes.SHA384())))
    return b64url(r.to_bytes(P521_COORDINATE_BYTES, "big")
                  + s.to_bytes(P521_COORDINATE_BYTES, "big"))


def p2p_login(private: Mapping[str, Any] | ec.EllipticCurvePrivateKey, user: str,
              server_peer: str, client_peer: str, moment: Any,
              listen: Iterable[str] = ()) -> dict[str, Any]:
    """The first message of a key login on a libp2p stream (docs/protocol.md, 15.3):
    ``date`` is ``moment`` (a datetime: the client's clock, within the server's date
    window) as ``Date#toJSON`` writes it, ``sign`` the signature of the message binding
    both peer ids and that date."""
    date = js_date(moment)
    return {"user": user, "date": date, "listen": list(listen),
            "sign": sign(private, p2p_signed_message(server_peer, client_peer, date))}


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pub_param(public: Mapping[str, Any]) -> str:
    """The ``pub`` URL parameter: base64url (no padding) of the compact JSON JWK, members
    in the order given (the server stores the text as sent)."""
    return b64url(_compact(dict(public)))


def listen_param(channels: Iterable[str]) -> str:
    """The ``db`` URL parameter: base64url (no padding) of the JSON list of channels."""
    return b64url(_compact(list(channels)))


# -- encryption (wyseman lib/encrypt.js) ------------------------------------------------------

def _derive(passphrase: str, salt: bytes) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt,
                     iterations=PBKDF2_ITERATIONS)
    return kdf.derive(passphrase.encode("utf-8"))


def encrypt_json(value: Any, passphrase: str) -> dict[str, str]:
    """``value`` as compact JSON, encrypted as ``lib/encrypt.js`` does (new salt and IV)."""
    salt, iv = os.urandom(SALT_BYTES), os.urandom(IV_BYTES)
    data = AESGCM(_derive(passphrase, salt)).encrypt(iv, _compact(value), None)
    return {"s": salt.hex(), "i": iv.hex(), "d": base64.b64encode(data).decode("ascii")}


def is_encrypted(blob: Any) -> TypeGuard[Mapping[str, Any]]:
    """wylib's test: an object with all of ``s``, ``i`` and ``d``."""
    return isinstance(blob, Mapping) and all(k in blob for k in ("s", "i", "d"))


def decrypt_json(blob: Mapping[str, Any] | str, passphrase: str) -> Any:
    """The value an ``{s, i, d}`` blob (or its JSON text) holds; a wrong passphrase or a
    damaged blob raises :class:`KeyFileError` (GCM cannot tell the two apart)."""
    if isinstance(blob, str):
        try:
            blob = json.loads(blob)
        except ValueError:
            raise KeyFileError("encrypted data is not JSON") from None
    if not is_encrypted(blob):
        raise KeyFileError("not encrypted data (no s, i, d members)")
    try:
        salt, iv = bytes.fromhex(blob["s"]), bytes.fromhex(blob["i"])
        data = base64.b64decode(blob["d"], validate=True)
        cipher = AESGCM(_derive(passphrase, salt))
    except (TypeError, ValueError, binascii.Error):
        raise KeyFileError("encrypted data is damaged (bad s, i or d)") from None
    try:
        plain = cipher.decrypt(iv, data, None)
    except InvalidTag:
        raise KeyFileError("wrong passphrase (or the encrypted data is damaged)") from None
    except ValueError:           # IV of an impossible length
        raise KeyFileError("encrypted data is damaged (bad i)") from None
    try:
        return json.loads(plain.decode("utf-8"))
    except ValueError:
        raise KeyFileError("decrypted data is not JSON text") from None


# -- key files -----------------------------------------------------------------------------

def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise KeyFileError(f"{what}: port {value!r} is not a number") from None
    if not 0 < port < 65536 or isinstance(value, bool) or isinstance(value, float):
        raise KeyFileError(f"{what}: port {value!r} is out of range")
    return port


@dataclass(frozen=True)
class Site:
    """One login of a key file: where, as whom, and the private JWK. ``p2p``: the
    server's libp2p multiaddrs, when the ticket had them (kept in the file's ``p2p``
    member, which wylib ignores), so that later logins dial libp2p first."""

    host: str
    port: int
    user: str
    key: Mapping[str, Any]
    p2p: tuple[str, ...] = ()

    def as_export(self) -> dict[str, Any]:
        """The wylib export form ``{"login": {...}}``."""
        login: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                                 "key": dict(self.key)}
        if self.p2p:
            login["p2p"] = list(self.p2p)
        return {"login": login}


def parse_key_file(content: Any, passphrase: str | None = None, *,
                   source: str = "key file") -> list[Site]:
    """The logins of a parsed key file (object or list; decrypted first if encrypted).

    As wylib's import, members other than ``login`` (e.g. ``ticket``) are skipped; a
    file without any login is an error.
    """
    if is_encrypted(content):
        if passphrase is None:
            raise KeyFileError(f"{source}: the key file is encrypted: give the passphrase")
        try:
            content = decrypt_json(content, passphrase)
        except KeyFileError as exc:
            raise KeyFileError(f"{source}: {exc}") from None
    entries = content if isinstance(content, list) else [content]
    sites = []
    for entry in entries:
        login = entry.get("login") if isinstance(entry, Mapping) else None
        if not isinstance(login, Mapping):
            continue
        if not isinstance(login.get("key"), Mapping):
            raise KeyFileError(f"{source}: a login without a key")
        user, host = login.get("user"), login.get("host")
        if not isinstance(user, str) or not user or not isinstance(host, str) or not host:
            raise KeyFileError(f"{source}: a login without host or user")
        sites.append(Site(host, _port(login.get("port"), source), user, login["key"],
                          multiaddrs(login.get("p2p"), source)))
    if not sites:
        raise KeyFileError(f"{source}: no login in this key file")
    return sites


def load_key_file(path: str | os.PathLike[str], passphrase: str | None = None) -> list[Site]:
    """The logins stored in a key file (wylib export format, plain or encrypted)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not UTF-8 text") from None
    try:
        content = json.loads(text)
    except ValueError:
        raise KeyFileError(f"{path}: not JSON") from None
    return parse_key_file(content, passphrase, source=str(path))


def save_key_file(path: str | os.PathLike[str], sites: Iterable[Site | Mapping[str, Any]],
                  passphrase: str | None = None) -> None:
    """Write a key file as wylib exports it (one site → an object, several → a list),
    encrypted when a passphrase is given.

    The file holds private keys: it is created readable by the owner only (0600) and
    written to a temporary file in the same directory, synced, then renamed over the
    target, so a crash never leaves a half-written or world-readable key file.
    ``sites`` may be :class:`Site` objects or mappings with host, port, user, key.
    """
    exports = []
    for site in sites:
        if not isinstance(site, Site):
            site = Site(site["host"], site["port"], site["user"], site["key"],
                        tuple(site.get("p2p", ())))
        exports.append(site.as_export())
    if not exports:
        raise KeyFileError("no site to save")
    content: Any = exports[0] if len(exports) == 1 else exports
    if passphrase:
        data = _compact(encrypt_json(content, passphrase))
    else:
        data = json.dumps(content, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    target = Path(path)
    directory = target.parent
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)     # mkstemp already does; say it anyway
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    try:                         # make the rename itself durable (best effort)
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# -- tickets --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ticket:
    """A one-time login ticket (docs/protocol.md, 4.3 "Ticket login"). ``host``/``port``
    are None when the ticket does not say (p2p tickets carry ``addr``/``boot`` instead);
    ``user`` may be absent too."""

    token: str
    host: str | None
    port: int | None
    user: str | None
    expires: str | None = None
    addr: str | None = None
    boot: Any = None
    #: the server's libp2p multiaddrs (the JSON form's ``p2p`` member, docs/protocol.md
    #: 16.1): a client dials them first and falls back to ``host``/``port``
    p2p: tuple[str, ...] = ()


def _optional_text(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise KeyFileError(f"ticket: {what} is not text")
    return value


#: at most this many multiaddrs in a ticket or key file, each at most this long: what a
#: server has (a few listen addresses), with room to spare, and no more
MAX_MULTIADDRS = 16
MAX_MULTIADDR_LENGTH = 512


def multiaddrs(value: Any, what: str) -> tuple[str, ...]:
    """The ``p2p`` member of a ticket or key file: a list of multiaddrs ending in
    ``/p2p/PEER`` (absent or null: none). Checked in form and size only here; the
    client's dial parses them. Bounded, as the file may come from anywhere."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise KeyFileError(f"{what}: p2p is not a list of multiaddrs")
    if len(value) > MAX_MULTIADDRS:
        raise KeyFileError(f"{what}: p2p has more than {MAX_MULTIADDRS} multiaddrs")
    for address in value:
        if not isinstance(address, str) or not address.startswith("/") \
                or "/p2p/" not in address or len(address) > MAX_MULTIADDR_LENGTH:
            raise KeyFileError(f"{what}: p2p: {str(address)[:80]!r} is not a multiaddr "
                               "ending in /p2p/PEER")
    return tuple(value)


def _url_query(query: str) -> dict[str, str]:
    """``a=b&c=d`` split as wylib does, values still encoded; the first occurrence of a
    name wins."""
    values: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name and name not in values:
            values[name] = value
    return values


def _uri_component(value: str | None) -> str | None:
    """``decodeURIComponent`` (so ``+`` stays a plus); empty → None."""
    return unquote(value, errors="strict") or None if value else None


def parse_ticket(text: str) -> Ticket:
    """A ticket in any form wyclif's ``ticket`` tool prints: JSON
    ``{"ticket": {"token", "expires", "host", "port"[, "user"][, "p2p"]}}`` (``p2p``:
    the server's libp2p multiaddrs, our extension), a link
    ``https://H/connect?token=…&user=…&host=…&port=…`` or a web URL
    ``https://H:S/wyatt.html?token=…``. A URL without ``host`` means the URL's own
    host, as wylib reads ``location``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            raise KeyFileError("ticket: not JSON") from None
        ticket = body.get("ticket") if isinstance(body, Mapping) else None
        if not isinstance(ticket, Mapping):
            raise KeyFileError('ticket: no "ticket" member')
        token = _optional_text(ticket.get("token"), "token")
        if not token:
            raise KeyFileError("ticket: no token")
        port = ticket.get("port")
        return Ticket(token, _optional_text(ticket.get("host"), "host"),
                      None if port in (None, "") else _port(port, "ticket"),
                      _optional_text(ticket.get("user"), "user"),
                      _optional_text(ticket.get("expires"), "expires"),
                      _optional_text(ticket.get("addr"), "addr"), ticket.get("boot"),
                      multiaddrs(ticket.get("p2p"), "ticket"))
    try:
        parts = urlsplit(text)
        query = _url_query(parts.query)
        url_host = parts.hostname
        token, host, port, user, addr = (
            _uri_component(query.get(k)) for k in ("token", "host", "port", "user", "addr"))
        # p2p links: boot=<encodeURIComponent(a)>,<encodeURIComponent(b)>
        boot = [unquote(b, errors="strict") for b in query["boot"].split(",")] \
            if query.get("boot") else None
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError("ticket: not a valid URL") from None
    if not parts.scheme or not token:
        raise KeyFileError("ticket: neither a JSON ticket nor a link with token=")
    return Ticket(token, host or url_host, _port(port, "ticket") if port else None, user,
                  None, addr, boot)
