"""Flaw 4, nonce reuse across raced paths: an attacker who carries two of the paths raced for
one session (two relays, or one box on the way) compares their frames.

Both paths are secured as the media service secures every raced path (same invite/answer
secret and transcript), over real TCP through the attacker's recording forwarders. With one
(key, nonce) pair used on both paths, the confirmation frames are byte-identical, and the XOR
of the two paths' frame 1 is the XOR of their plaintexts: knowing what one path carried reads
the other. With a key per path, neither holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from overlay.media.secure_stream import CONFIRM_LABEL, TAG_BYTES
from overlay.media.stream import TcpByteStream
from overlay.media.transport_hooks import secure
from tests.helpers.media_attacker import Listener, RecordingForwarder, frames_after
from tests.helpers.netutil import loopback_ips

CONFIRM_FRAME = 1 + len(CONFIRM_LABEL) + 32 + TAG_BYTES


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


async def test_two_raced_paths_never_share_a_key_and_nonce() -> None:
    host = loopback_ips(1)[0]
    shared = os.urandom(32)
    transcript = hashlib.blake2b(os.urandom(64), digest_size=32).digest()
    callee = Listener()
    target = await callee.start(host)
    relays = [RecordingForwarder(target), RecordingForwarder(target)]
    try:
        raws = []
        for relay in relays:
            reader, writer = await asyncio.open_connection(*await relay.start(host))
            raws.append(TcpByteStream(reader, writer))
        accepted = [await asyncio.wait_for(callee.accepted.get(), 5) for _ in relays]
        # the race: both paths secured at once, by both sides, with the session's secrets
        secured = await asyncio.gather(
            *(secure(raw, shared, transcript, True) for raw in raws),
            *(secure(raw, shared, transcript, False) for raw in accepted))
        caller_paths, callee_paths = secured[:2], secured[2:]
        # frame 1 on each path, both directions: same length, contents the attacker knows
        # on path 0 only
        known = b"K" * 40
        secret = b"the other path's private bytes!!!!!!!!!"[:40]
        for paths in (caller_paths, callee_paths):
            await paths[0].send(known)
            await paths[1].send(secret)
        got = [await callee_paths[0].recv(), await callee_paths[1].recv()]
        assert got == [known, secret]
        await asyncio.gather(*(p.recv() for p in caller_paths))
    finally:
        for relay in relays:
            await relay.stop()
        await callee.stop()

    for direction in ("up", "down"):
        seen = [frames_after(getattr(r, direction), CONFIRM_FRAME) for r in relays]
        assert all(len(f) >= 2 for f in seen), f"{direction}: frames not found: {seen}"
        (confirm_a, one_a, *_), (confirm_b, one_b, *_) = seen
        assert confirm_a != confirm_b, (
            f"{direction}: both paths' confirmation frames are identical: one (key, nonce) "
            "pair used on two paths")
        # keystream reuse: ciphertext XOR = plaintext XOR (type byte DATA=1 on both)
        recovered = xor(xor(one_a[5:5 + len(known)], one_b[5:5 + len(known)]), known)
        assert recovered != secret, (
            f"{direction}: the attacker read path 1's frame from path 0's: {recovered!r}")
