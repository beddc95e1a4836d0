"""Resolving ``HOST:PORT`` names to addresses (asyncio)."""

from __future__ import annotations

import asyncio
import socket

from overlay.core.addresses import Address, is_ip


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
