"""Distance on one loopback: a TCP proxy in front of a daemon that delays each connection by
the round trip between the connecting process's place and the daemon's.

Process tests need near and far supernodes while every process runs on 127.x. A supernode
advertises its proxy's address (``--advertise``); for each connection the proxy finds which
process opened it in the kernel's socket tables (``/proc/net/tcp``: the inode of the socket
whose local address is the connection's peer; ``/proc/PID/fd``: which of the watched
processes holds that inode) and delays every byte, both ways, by half the round trip that
``rtt_s(pid)`` gives (a process it does not watch: ``rtt_s(None)``). The daemons under test
run unmodified: their probes, handshakes and attachments simply take that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Callable, Iterable

#: bytes read per chunk
CHUNK = 65536


def _hex_address(host: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp writes it (little-endian hex, port in hex)."""
    packed = ipaddress.IPv4Address(host).packed[::-1]
    return f"{packed.hex().upper()}:{port:04X}"


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> str | None:
    """The inode of the IPv4 TCP socket bound to ``local`` and connected to ``remote``."""
    want = (_hex_address(*local), _hex_address(*remote))
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return fields[9]
    return None


def owner_of(inode: str, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the socket ``inode`` open."""
    link = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                        return pid
    return None


class LatencyProxy:
    """``listen`` -> ``target``, each connection delayed by ``rtt_s(pid of its opener)``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int],
                 watched: Callable[[], Iterable[int]],
                 rtt_s: Callable[[int | None], float]) -> None:
        self.listen = listen
        self.target = target
        self.watched = watched
        self.rtt_s = rtt_s
        #: the round trip each accepted connection got, by the pid it came from
        self.seen: list[tuple[int | None, float]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> LatencyProxy:
        """Listen (on a free port when ``listen``'s is 0: ``listen`` then names it)."""
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.listen = (self.listen[0], self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            peer = writer.get_extra_info("peername")[:2]
            inode = socket_inode(peer, writer.get_extra_info("sockname")[:2])
            pid = owner_of(inode, self.watched()) if inode is not None else None
            rtt = self.rtt_s(pid)
            self.seen.append((pid, rtt))
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            await asyncio.gather(_pipe(reader, up_writer, rtt / 2),
                                 _pipe(up_reader, writer, rtt / 2), return_exceptions=True)
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``src`` to ``dst``, each chunk ``delay_s`` after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the link's latency, not a wait for a condition
            if not data:
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await src.read(CHUNK):
            queue.put_nowait((loop.time() + delay_s, data))
    except OSError:
        pass
    queue.put_nowait((loop.time() + delay_s, b""))
    try:
        await sender
    except OSError:
        pass
    finally:
        sender.cancel()
