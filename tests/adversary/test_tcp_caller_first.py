"""Caller-first TCP dials (:mod:`overlay.media.tcp_listener`), attacked.

A caller-first dial returns before anything authenticated the far end, so:
- a far end that takes the connection and stays silent (someone else's listener at a stale
  address, a box on the way that swallows the flight) must fail the path within the
  secure timeout: the transfer then resumes in a new session, without caller-first paths.
  Without a deadline the caller waited on it for ever;
- a caller's first flight replayed to the callee on another connection must be refused
  before the callee seals anything (it would seal again under that path's keys);
- an attacker who saw a session id in clear (every plain dial starts with it) must not make
  the caller take a caller-first path it did not dial: the caller's listener drops the
  caller-first preamble.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from overlay.media.secure_stream import InviteSalt, SecureStreamError, new_path_salt, secure
from overlay.media.stream import TcpByteStream
from overlay.media.tcp_listener import MediaListener, caller_first_preamble, dial_tcp
from tests.helpers.netutil import loopback_ips
from tests.helpers.stream_pairs import record_sends

TIMEOUT_S = 1.0


async def test_a_silent_far_end_fails_the_callers_path_within_the_timeout() -> None:
    ip = loopback_ips(1)[0]
    swallowed = bytearray()
    held: list[asyncio.StreamWriter] = []

    async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # takes everything, says nothing
        while data := await reader.read(65536):
            swallowed.extend(data)

    server = await asyncio.start_server(stand_in, ip, 0)
    port = server.sockets[0].getsockname()[1]
    shared, transcript = os.urandom(32), os.urandom(32)
    raw = await dial_tcp(ip, port, os.urandom(16), caller_first=True)
    caller = await secure(raw, shared, transcript, True, timeout=TIMEOUT_S,
                          invite_salt=InviteSalt(new_path_salt()), caller_first=True)
    try:
        await caller.send(b"HEADER and the first 4 KiB")
        with pytest.raises(SecureStreamError) as failed:
            await asyncio.wait_for(caller.recv(), TIMEOUT_S + 3)
        assert failed.value.reason == "timeout"
        with pytest.raises(SecureStreamError):
            await caller.send(b"more")
        assert len(swallowed) > 16  # the flight went out, and nothing ever came back
    finally:
        await caller.close()
        for writer in held:
            writer.close()
        server.close()


async def test_a_replayed_first_flight_is_refused_before_the_callee_seals_anything() -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    session_id, shared, transcript = os.urandom(16), os.urandom(32), os.urandom(32)
    salt = new_path_salt()
    callee_salts = InviteSalt(salt)
    queue = listener.expect(session_id, caller_first=True)
    opened: list[TcpByteStream] = []
    try:
        # the real dial, recorded by the attacker that carries it
        caller_raw = await dial_tcp(ip, listener.port, session_id, caller_first=True)
        flight = record_sends(caller_raw)
        caller = await secure(caller_raw, shared, transcript, True, timeout=5,
                              invite_salt=InviteSalt(salt), caller_first=True)
        await caller.send(b"the file")
        callee_raw = await asyncio.wait_for(queue.get(), 5)
        callee = await secure(callee_raw, shared, transcript, False, timeout=5,
                              invite_salt=callee_salts, caller_first=callee_raw.caller_first)
        assert await callee.recv() == b"the file"

        # the attacker plays the caller's first flight again on a connection of its own
        reader, writer = await asyncio.open_connection(ip, listener.port)
        attacker = TcpByteStream(reader, writer)
        opened.append(attacker)
        await attacker.send(caller_first_preamble(session_id) + bytes(flight))
        replayed = await asyncio.wait_for(queue.get(), 5)
        opened.append(replayed)
        with pytest.raises(SecureStreamError) as refused:
            await secure(replayed, shared, transcript, False, timeout=5,
                         invite_salt=callee_salts, caller_first=replayed.caller_first)
        assert refused.value.reason == "replayed_salt"
        leaked = await asyncio.wait_for(reader.read(), 5)
        assert leaked == b"", f"the callee sent {len(leaked)} bytes to the replay"
        await caller.close()
        await callee.close()
    finally:
        for stream in opened:
            await stream.close()
        listener.forget(session_id)
        await listener.stop()


async def test_the_callers_listener_drops_a_caller_first_dial() -> None:
    ip = loopback_ips(1)[0]
    listener = MediaListener()
    await listener.start(ip)
    session_id = os.urandom(16)
    queue = listener.expect(session_id)  # the caller's session: the callee dials it plainly
    try:
        # the attacker saw the session id in clear and dials the caller "caller first": had
        # the caller taken it, it would have sent first and selected a path nobody confirmed
        forged = await dial_tcp(ip, listener.port, session_id, caller_first=True)
        await forged.send(os.urandom(16) + b"\x00" * 64)
        assert await asyncio.wait_for(forged.reader.read(), 5) == b""
        assert queue.empty()
        await forged.close()
    finally:
        listener.forget(session_id)
        await listener.stop()
