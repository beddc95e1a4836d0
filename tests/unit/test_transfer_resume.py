"""A transfer whose path dies mid-way resumes on a new path from the receiver's offset:
no byte lost, none duplicated, and the file's sha256 checks."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from overlay.media.errors import PathLost
from overlay.media.secure_stream import secure
from overlay.media.stream import ByteStream, TcpByteStream
from overlay.media.transfer import PartialStore, receive_file, send_file
from tests.helpers.netutil import loopback_ips, wait_for


class DyingForwarder:
    """A real TCP forwarder that closes both sides after ``limit`` bytes towards the server."""

    def __init__(self, target: tuple[str, int], limit: int) -> None:
        self.target, self.limit, self.forwarded = target, limit, 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, 0)
        return host, self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src, dst, counted: bool) -> None:
            while data := await src.read(65536):
                if counted:
                    room = self.limit - self.forwarded
                    data = data[:room]
                    self.forwarded += len(data)
                dst.write(data)
                await dst.drain()
                if counted and self.forwarded >= self.limit:
                    break
            for w in (writer, up_writer):
                w.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False),
                             return_exceptions=True)


@pytest.mark.parametrize("secured", [False, True], ids=["raw", "secured"])
async def test_resume_after_the_path_dies(tmp_path, secured):
    """Secured, the cut-off path ends without the secure stream's CLOSE frame ("truncated"):
    a relay cut off mid-transfer looks like that, and it must resume like any lost path."""
    shared, transcript = os.urandom(32), os.urandom(32)

    async def path(reader, writer, initiator: bool) -> ByteStream:
        raw = TcpByteStream(reader, writer)
        return await secure(raw, shared, transcript, initiator, 5.0) if secured else raw

    ip = loopback_ips(1)[0]
    data = os.urandom(3 * 2**20 + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    inbox = tmp_path / "inbox"
    partials = PartialStore()
    results = []

    async def receiver(reader, writer) -> None:
        try:
            results.append(await receive_file(await path(reader, writer, False), inbox,
                                              partials=partials, sender="alice"))
        except Exception as exc:  # the interrupted first attempt
            results.append(exc)

    server = await asyncio.start_server(receiver, ip, 0)
    target = (ip, server.sockets[0].getsockname()[1])
    forwarder = DyingForwarder(target, limit=2**20)
    transfer_id = os.urandom(16)
    first = await asyncio.open_connection(*await forwarder.start(ip))
    try:
        await send_file(await path(*first, True), src, transfer_id=transfer_id)
        raise AssertionError("the first path should have died")
    except PathLost:
        pass
    await wait_for(lambda: bool(results))
    assert "interrupted" in str(results[0])
    held = next(iter(partials.items.values())).received
    assert 0 < held <= 2**20

    second = await asyncio.open_connection(*target)
    done = await send_file(await path(*second, True), src, transfer_id=transfer_id)
    assert done.resumed_from == held
    await wait_for(lambda: len(results) == 2)
    received = results[1]
    assert received.resumed_from == held
    assert hashlib.sha256((inbox / "big.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    assert [p.name for p in inbox.iterdir()] == ["big.bin"]  # no partial file left behind
    server.close()
