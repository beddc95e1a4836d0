"""A transfer's first attempt sends its first DATA frame right behind the HEADER (no round
trip for READY), and a receiver that refuses the file before READY still gets its refusal
across: the sender reads the reason, not a reset connection. Real TCP, secured as the media
service secures every path."""

from __future__ import annotations

import asyncio
import hashlib
import os

import msgpack

from overlay.media.inbox_limits import InboxGuard, InboxLimits
from overlay.media.transfer import (
    CHUNK,
    DATA,
    FIRST_DATA_BYTES,
    HEADER,
    READY,
    FrameReader,
    TransferError,
    frame,
    receive_file,
    send_file,
)
from tests.helpers.media_attacker import secured_pair
from tests.helpers.netutil import loopback_ips


async def test_the_first_chunk_arrives_without_waiting_for_ready(tmp_path) -> None:
    data = os.urandom(3 * CHUNK + 17)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    async with secured_pair(loopback_ips(1)[0], os.urandom(32), os.urandom(32)) as (a, b):
        sending = asyncio.ensure_future(send_file(a, src, first_attempt=True))
        reader = FrameReader(b)
        kind, _ = await asyncio.wait_for(reader.next(), 5)
        assert kind == HEADER
        # READY not sent yet: the first chunk is already here
        kind, payload = await asyncio.wait_for(reader.next(), 5)
        assert (kind, payload) == (DATA, data[:FIRST_DATA_BYTES])
        assert not sending.done()
        await b.send(frame(READY, msgpack.packb({"offset": 0})))
        got = bytearray(payload)
        while len(got) < len(data):
            kind, payload = await asyncio.wait_for(reader.next(), 5)
            assert kind == DATA
            got += payload
        assert bytes(got) == data  # the rest from where the first chunk ended, once
        sending.cancel()


async def test_a_whole_file_with_the_early_chunk_is_intact(tmp_path) -> None:
    data = os.urandom(2 * CHUNK + 5)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    inbox = tmp_path / "inbox"
    async with secured_pair(loopback_ips(1)[0], os.urandom(32), os.urandom(32)) as (a, b):
        sent, received = await asyncio.gather(send_file(a, src, first_attempt=True),
                                              receive_file(b, inbox))
    assert sent.resumed_from == 0 and received.bytes == len(data)
    assert hashlib.sha256((inbox / "f.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()


async def test_a_refusal_before_ready_reaches_the_sender_of_an_early_chunk(tmp_path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(4 * CHUNK))
    guard = InboxGuard(InboxLimits(max_bytes=CHUNK))  # the file does not fit
    for _ in range(5):  # a reset would lose the refusal on some runs
        async with secured_pair(loopback_ips(1)[0], os.urandom(32), os.urandom(32)) as (a, b):

            async def receiver() -> None:
                try:
                    await receive_file(b, tmp_path / "inbox", guard=guard)
                finally:
                    await b.close()

            sent, refused = await asyncio.gather(send_file(a, src, first_attempt=True),
                                                 receiver(), return_exceptions=True)
        assert isinstance(sent, TransferError) and "refused" in str(sent), sent
        assert "quota" in str(sent), sent
        assert isinstance(refused, TransferError), refused
