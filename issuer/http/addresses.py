"""The client's address, believing ``X-Forwarded-For`` only from trusted proxies.

Anyone can send ``X-Forwarded-For``; believing it from everybody would let an attacker
pick the address their failed logins count against. Only when the direct peer is a
configured proxy is the header read, right to left, skipping the proxies' own entries:
the first entry that is not a trusted proxy was written by one, so it is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Networks from addresses or CIDRs (validated by the settings)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The address to count failures against: the peer unless it is a trusted proxy."""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        if _parse(hop) is None:
            # A trusted proxy writes addresses; anything else is not its entry: the peer
            # is the last address known to be true.
            return peer
        if not _is_trusted(hop, trusted):
            return hop
    # Every hop is a proxy of ours (an internal caller): the left-most one is the client.
    first = next((hop for hop in hops if hop), None)
    return first if first is not None else peer


def address_in(address: str, networks: Sequence[Network]) -> bool:
    """True if ``address`` (IPv4-mapped IPv6 included) is in one of ``networks``."""
    return _is_trusted(address, networks)


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    ip = _parse(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)
