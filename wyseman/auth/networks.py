"""The network a client address is counted under by the per-address bounds
(``[limits] max_pending_per_address``), alike for every transport: an IPv4 address by
itself (also when IPv4-mapped), an IPv6 address by its ``/64``, which one subscriber
typically gets whole, so that a client cannot escape the bound by moving through its
own network."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_network(host: str | None) -> Network | None:
    """The network ``host`` (an address's text, maybe with a ``%zone``) counts under;
    ``None`` (not counted) when it is not an IP address (a Unix socket, a name)."""
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return ipaddress.IPv6Network((ip, 64), strict=False)
        ip = ip.ipv4_mapped
    return ipaddress.IPv4Network(ip)


def network_key(network: Network) -> str:
    """``network`` as text: ``192.0.2.7``, ``2001:db8:1:2::/64``."""
    return str(network.network_address) if network.version == 4 else str(network)
