"""Addresses: the ``Address`` type, parsing ``HOST:PORT`` arguments, the network an address
counts in (/24, /48) and its scope (public, private, loopback, or never dialled) (no I/O).

Resolving names is :mod:`overlay.core.resolver`'s job."""

from __future__ import annotations

import functools
import ipaddress

from overlay.core.errors import OverlayError

#: a (host, port) pair, as sockets and the wire formats hold it
Address = tuple[str, int]


class AddressError(OverlayError, ValueError):
    """An address argument is malformed or does not resolve."""


def parse_hostport(text: str) -> Address:
    """``1.2.3.4:5``, ``[::1]:5`` or ``name.example:5`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host or not (rest.isascii() and rest.isdigit()):  # "²" is a digit
        raise AddressError(f"{text!r} is not HOST:PORT")
    port = int(rest)
    if not 0 <= port < 65536:
        raise AddressError(f"port {port} in {text!r} is out of range")
    return host, port


def parse_hostports(text: str) -> list[Address]:
    return [parse_hostport(part) for part in text.split(",") if part.strip()]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def network_of(ip: str, v4_prefix: int = 24, v6_prefix: int = 48) -> str | None:
    """The network ``ip`` counts in for per-network limits: its /24 (IPv4, IPv4-mapped IPv6
    too) or /48 (IPv6), as ``"198.51.100.0/24"``; None when ``ip`` is not an address."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@functools.lru_cache(maxsize=65536)
def network_key(ip: str) -> str:
    """:func:`network_of` as a key for per-network counts, and ``ip`` itself when it is not an
    address (it then counts alone). Cached: asked for every contact, datagram and session."""
    return network_of(ip) or ip


# -- scopes: which addresses a node may be asked to dial ------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
    "fec0::/10",
))
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")

PUBLIC = "public"
PRIVATE = "private"
LOOPBACK = "loopback"
#: scopes never dialled, whoever names them
NEVER = ("unspecified", "link-local", "multicast", "reserved", "not an IP literal")


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a plain IP literal (no scope id, no name), with
    IPv4-mapped IPv6 unwrapped; else None."""
    if "%" in host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def scope(host: str) -> str:
    """``public``, ``private``, ``loopback`` or one of :data:`NEVER`."""
    ip = ip_literal(host)
    if ip is None:
        return "not an IP literal"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in THIS_NETWORK):
        return "unspecified"
    if ip.is_loopback:
        return LOOPBACK
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if any(ip in net for net in PRIVATE_NETS):
        return PRIVATE
    return PUBLIC
