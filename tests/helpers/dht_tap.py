"""Mallory's UDP socket in DHT attack tests: it captures the datagram an honest node sends to
what it believes is a peer at mallory's address, and sends datagrams of her choosing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from overlay.dht import DHTNode

#: the msg_id's place in every DHT datagram (the documented layout: magic(4), kind(1))
MSG_ID = slice(5, 25)


class Tap:
    """Mallory's socket: what an honest node sends it, and what she sends from it."""

    def __init__(self, ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)

    @property
    def address(self) -> tuple[str, int]:
        addr = self.sock.getsockname()
        return (addr[0], addr[1])

    async def capture(self, honest: DHTNode, method: str, *args: Any, to: bytes) -> bytes:
        """The datagram ``honest`` sends calling ``method`` on node ``to`` (a node id), which
        it believes is at mallory's address."""
        loop = asyncio.get_running_loop()

        async def call() -> None:
            with contextlib.suppress(TimeoutError):
                await honest.call(self.address, method, *args, node_id=to)

        task = asyncio.ensure_future(call())
        try:
            data: bytes = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 3)
        finally:
            task.cancel()
        return data

    async def send_then(self, datagrams: list[bytes], genuine: bytes, to: DHTNode
                        ) -> tuple[list[bytes], bytes]:
        """Send ``datagrams`` then ``genuine`` to ``to``: (answers to ``datagrams`` that came
        before the answer to ``genuine``, that answer)."""
        loop = asyncio.get_running_loop()
        for datagram in datagrams:
            self.sock.sendto(datagram, to.address)
        self.sock.sendto(genuine, to.address)
        ids = {d[MSG_ID] for d in datagrams}
        answers = []
        while True:
            data: bytes = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 3)
            if data[MSG_ID] == genuine[MSG_ID]:
                return answers, data
            if data[MSG_ID] in ids:
                answers.append(data)

    async def replay(self, datagram: bytes, victim: DHTNode, sentinel: bytes) -> list[bytes]:
        """Send ``datagram`` then ``sentinel`` to ``victim``; the answers to ``datagram``
        received before the answer to ``sentinel``."""
        answers, _ = await self.send_then([datagram], sentinel, victim)
        return answers

    def close(self) -> None:
        self.sock.close()
