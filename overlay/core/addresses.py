"""Parsing and resolving ``HOST:PORT`` arguments."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

#: a (host, port) pair, as sockets and the wire formats hold it
Address = tuple[str, int]


class AddressError(ValueError):
    """An address argument is malformed or does not resolve."""


def parse_hostport(text: str) -> Address:
    """``1.2.3.4:5``, ``[::1]:5`` or ``name.example:5`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host or not rest.isdigit():
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


async def resolve(addrs: list[Address]) -> list[Address]:
    """Resolve DNS names to IPv4/IPv6 addresses; names that do not resolve are skipped."""
    loop = asyncio.get_running_loop()
    out: list[Address] = []
    for host, port in addrs:
        if is_ip(host):
            out.append((host, port))
            continue
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError:
            continue
        for info in infos:
            addr = (str(info[4][0]), port)
            if addr not in out:
                out.append(addr)
    return out
