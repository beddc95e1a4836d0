"""The caller's path salt in the signed invite (issue 13): the callee confirms a path without
waiting for anything from the caller, because the caller's salt on a path is derived from
the invite's salt and the callee's fresh salt on that path. The property kept: no two paths
of a session share a key, nor does a path replayed into another authenticate.

The attacker carries two of the caller's paths (two relays, or one box on the way). On the
second it replays what the callee sent on the first (its salt, then its confirmation). If
the caller accepted that salt again it would derive the first path's keys a second time and
seal its own confirmation and data with the same (key, nonce) pairs as on the first path:
keystream reuse. The caller must refuse a callee salt it has already seen in the session,
before it sends anything sealed on that path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from overlay.media.secure_stream import (
    InviteSalt,
    SecureStreamError,
    new_path_salt,
    secure,
)
from tests.helpers.netutil import loopback_ips
from tests.helpers.stream_pairs import record_sends, tcp_stream_pair


async def test_a_callee_salt_replayed_into_another_path_is_refused() -> None:
    host = loopback_ips(1)[0]
    shared = os.urandom(32)
    transcript = hashlib.blake2b(os.urandom(64), digest_size=32).digest()
    caller_salts = InviteSalt(new_path_salt())
    callee_salts = InviteSalt(caller_salts.salt)  # what the callee read in the invite

    # path 1: a real path, recorded by the attacker that carries it
    caller_raw, callee_raw = await tcp_stream_pair(host)
    callee_sent = record_sends(callee_raw)
    first = await asyncio.gather(
        secure(caller_raw, shared, transcript, True, timeout=5, invite_salt=caller_salts),
        secure(callee_raw, shared, transcript, False, timeout=5, invite_salt=callee_salts))
    await first[0].send(b"path one")
    assert await first[1].recv() == b"path one"

    # path 2: the attacker plays the callee's salt and confirmation from path 1 to the caller
    caller_raw2, attacker = await tcp_stream_pair(host)
    await attacker.send(bytes(callee_sent))
    with pytest.raises(SecureStreamError) as refused:
        await secure(caller_raw2, shared, transcript, True, timeout=5,
                     invite_salt=caller_salts)
    assert refused.value.reason == "replayed_salt"
    # and the caller sealed nothing on path 2 (no frame under path 1's keys)
    leaked = bytearray()
    while data := await asyncio.wait_for(attacker.recv(), 5):
        leaked += data
    assert not leaked, f"the caller sent {len(leaked)} bytes on path 2"
    for stream in (*first, attacker):
        await stream.close()
