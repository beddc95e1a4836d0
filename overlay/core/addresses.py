"""Addresses: the ``Address`` type and parsing ``HOST:PORT`` arguments (no I/O).

Resolving names is :mod:`overlay.core.resolver`'s job."""

from __future__ import annotations

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
