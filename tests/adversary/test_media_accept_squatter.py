"""A squatter on the caller's accept path: someone who knows a session's id (a supernode that
forwarded the invite sees it) dials the caller's media listener before the callee does.

A file's caller now sends its confirmation, ``SELECT`` and first data on that connection
without waiting for the peer's confirmation (``early_select``), so the squatter can be sent
them. What must hold: it reads nothing (all of it is sealed with keys derived from the
session's X25519 secret, which it lacks), and the caller's first read fails at once on a
forged confirmation, or within the handshake timeout when the squatter stays silent (the
send then resumes in a new session), instead of hanging or accepting its bytes as data.
Real TCP on loopback, the caller's real listener.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from overlay.media.connect import SELECT
from overlay.media.secure_stream import (
    PATH_SALT_BYTES,
    SecureFramer,
    SecureStreamError,
    derive_keys,
    secure,
)
from overlay.media.tcp_listener import MediaListener
from tests.helpers.netutil import loopback_ips

MARKER = b"the file's first bytes: only the callee may read them"


async def _squat(forge: bool) -> tuple[bytes, SecureStreamError]:
    """The squatter dials first with the session id and a salt; ``forge``: it also sends a
    confirmation under keys of its own guessing. Returns what it received and the caller's
    error on reading."""
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    session_id, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    queue = listener.expect(session_id, early_salt=True)
    try:
        reader, writer = await asyncio.open_connection(ip, listener.port)
        squatter_salt = os.urandom(PATH_SALT_BYTES)
        writer.write(session_id + squatter_salt)
        caller_raw = await asyncio.wait_for(queue.get(), 5)
        assert caller_raw.early_salt is not None
        if forge:  # the best it can do: the real salts, a secret of its own
            salts = caller_raw.early_salt + squatter_salt
            send_key, recv_key = derive_keys(os.urandom(32), transcript, False, salts)
            writer.write(SecureFramer(send_key, recv_key, transcript).hello())
        caller = await secure(caller_raw, shared, transcript, initiator=True, timeout=1.0,
                              sent_salt=caller_raw.early_salt, confirm_later=True)
        await caller.send(SELECT + MARKER)
        began = time.monotonic()
        with pytest.raises(SecureStreamError) as failed:
            await asyncio.wait_for(caller.recv(), 5)
        assert time.monotonic() - began < 2.0  # the handshake's 1 s, not a hang
        await caller.close()
        seen = bytearray()
        while data := await asyncio.wait_for(reader.read(65536), 5):
            seen += data
        writer.close()
        return bytes(seen), failed.value
    finally:
        listener.forget(session_id)
        await listener.stop()


async def test_a_silent_squatter_reads_nothing_and_the_caller_gives_up_in_time() -> None:
    seen, error = await _squat(forge=False)
    assert MARKER not in seen and SELECT not in seen
    assert error.reason == "timeout"


async def test_a_forged_confirmation_fails_the_callers_first_read() -> None:
    seen, error = await _squat(forge=True)
    assert MARKER not in seen and SELECT not in seen
    assert error.reason == "auth"
