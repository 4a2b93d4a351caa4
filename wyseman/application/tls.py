"""TLS server contexts from PEM files, checked at start and re-readable on SIGHUP."""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="wyseman.tls")


class TLSConfigError(ValueError):
    """A certificate or key cannot be used; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def _load_pem_chain(data: bytes, path: Path) -> list[crypto.X509]:
    certificates = []
    marker = b"-----BEGIN CERTIFICATE-----"
    for block in data.split(marker)[1:]:
        try:
            certificates.append(crypto.load_certificate(crypto.FILETYPE_PEM, marker + block))
        except crypto.Error:
            raise TLSConfigError(f"{path}: not a PEM certificate") from None
    return certificates


def build_options(cert: Path, key: Path, chain: Path | None = None,
                  min_version: str = "1.2", session_tickets: bool = True
                  ) -> ssl.CertificateOptions:
    """CertificateOptions for the server; refuses missing/unreadable files or a key
    that does not match the certificate, with a message naming the file."""
    certs = _load_pem_chain(_read(cert, "certificate"), cert)
    if not certs:
        raise TLSConfigError(f"{cert}: no PEM certificate found")
    try:
        private_key = crypto.load_privatekey(crypto.FILETYPE_PEM, _read(key, "private key"))
    except crypto.Error:
        raise TLSConfigError(f"{key}: not a PEM private key (or it is encrypted)") from None
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate(certs[0])
    try:
        context.use_privatekey(private_key)
        context.check_privatekey()
    except SSL.Error:
        raise TLSConfigError(f"{key}: private key does not match the certificate {cert}") \
            from None
    extra = certs[1:]
    if chain:
        extra += _load_pem_chain(_read(chain, "certificate chain"), chain)
    minimum = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    # (Twisted turns session tickets off unless asked: OpenSSL then sends none, and every
    # connection of a returning client is a full handshake)
    return ssl.CertificateOptions(
        privateKey=private_key, certificate=certs[0], extraCertChain=extra,
        raiseMinimumTo=minimum, enableSessionTickets=session_tickets)


@implementer(IOpenSSLContextFactory)
class ReloadableContextFactory:
    """Hands out the current context; :meth:`reload` swaps in freshly read files.

    Open connections keep the context they were made with, so a reload drops none.
    """

    def __init__(self, cert: Path, key: Path, chain: Path | None = None,
                 min_version: str = "1.2", session_tickets: bool = True) -> None:
        self._paths = (cert, key, chain, min_version, session_tickets)
        self._options = build_options(*self._paths)

    def getContext(self) -> SSL.Context:  # noqa: N802 (Twisted interface)
        return self._options.getContext()

    def reload(self) -> bool:
        """Re-read the files; on error keep the old certificate and log why."""
        try:
            self._options = build_options(*self._paths)
        except TLSConfigError as exc:
            log.error("TLS reload failed, keeping the current certificate: {error}", error=exc)
            return False
        log.info("TLS certificate reloaded from {cert}", cert=str(self._paths[0]))
        return True
