"""The client's address, rendered once for both ``/clientinfo`` and the signed message.

The two must agree byte for byte or every key login fails, so both call
:func:`client_ip`. ``X-Forwarded-For`` counts only when the direct peer is a
configured trusted proxy; then the right-most address that is not itself a
trusted proxy is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from wyseman.auth.credentials import render_peer_ip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(text: str, proxies: Sequence[Network]) -> bool:
    address = _address(text)
    return address is not None and any(address in network for network in proxies)


def client_ip(peer: Any, forwarded_for: str | None, trusted_proxies: Sequence[Network],
              style: str = "node") -> str:
    """Client address from a Twisted ``IAddress`` (or host string) and the XFF header."""
    host = getattr(peer, "host", None)
    if host is None:  # Unix socket or a plain string
        host = peer if isinstance(peer, str) else "127.0.0.1"
    if forwarded_for and trusted_proxies and _trusted(host, trusted_proxies):
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if _address(hop) is None:
                break  # garbage: stop trusting the header here
            host = hop
            if not _trusted(hop, trusted_proxies):
                break
    address = _address(host)
    if address is None:
        return host
    return render_peer_ip(str(address), isinstance(address, ipaddress.IPv6Address), style)
