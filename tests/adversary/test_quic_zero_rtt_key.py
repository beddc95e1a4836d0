"""0-RTT media paths (issue 13) take the caller's bytes before any round trip, so what lets a
first flight in must be the session's key, and a first flight may not be played twice.

An attacker with only its own aioquic client, tickets of its own making, a machine on the
way that records the caller's first flight, or a server of its own, tries:

- to open a 0-RTT path to a callee with a ticket of another secret, or with none (a full
  handshake under the 0-RTT protocol): the callee leaves a ClientHello naming another ticket
  unanswered (it may be another session's, from the same peer) and closes one naming none at
  the ClientHello; either way it writes no stream byte and gives the race no path;
- to be the callee's stand-in (a server without the session's key): the caller's 0-RTT bytes
  stay sealed under keys the stand-in cannot derive, and the caller's path fails;
- to replay the caller's first flight (its salt, confirmation and data) into another path
  of the session: the callee refuses a caller salt it has keyed a path with already, before
  it sends anything (otherwise it would seal again under that path's keys: keystream reuse).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

from overlay.media.media_socket import MediaSocket
from overlay.media.quic.connect import quic_connect
from overlay.media.quic.core import (
    ALPN_ZERO_RTT,
    QuicPathError,
    QuicStreamCore,
    configuration,
)
from overlay.media.quic.ticket import session_ticket
from overlay.media.secure_stream import InviteSalt, SecureStreamError, new_path_salt
from tests.helpers.netutil import loopback_ips, udp_socket
from tests.helpers.stream_pairs import record_sends, tcp_stream_pair
from tests.helpers.zero_rtt import caller_first, session_material


def attacker_client(to: tuple[str, int], ticket_of: tuple[bytes, bytes] | None
                    ) -> QuicStreamCore:
    """The attacker's own 0-RTT client: a ticket from a secret of its own, or none at all
    (then it asks for the 0-RTT protocol with a full handshake)."""
    config = configuration(True, session_ticket=session_ticket(*ticket_of)
                           if ticket_of is not None else None)
    config.alpn_protocols = [ALPN_ZERO_RTT]
    client = QuicStreamCore(QuicConnection(configuration=config), is_client=True)
    client.zero_rtt, client.stream_id = True, 0
    client.connect(to, time.monotonic())
    client.conn.send_stream_data(0, b"OVLQ\x00\x00\x00\x01" + b"attacker's early bytes")
    return client


@pytest.mark.parametrize("ticket", ["another secret's", "none"])
async def test_a_first_flight_without_the_session_key_gets_no_path(ticket: str) -> None:
    shared, transcript = session_material()
    callee = await MediaSocket.open("127.0.0.1", 0)
    raw = udp_socket()
    try:
        accepting = asyncio.ensure_future(quic_connect(
            callee, raw.getsockname(), initiator=False, timeout=1.5,
            session_ticket=session_ticket(shared, transcript)))
        await asyncio.sleep(0)
        client = attacker_client(callee.local_address,
                                 session_material() if ticket != "none" else None)
        for data, _ in client.datagrams_to_send(time.monotonic()):
            raw.sendto(data, callee.local_address)
        # a ClientHello naming another session's ticket is not the session's: the callee
        # leaves it unanswered and keeps waiting (until its timeout); one naming none is
        # taken and closed, as the session's key was not used
        expected = "without the session's key" if ticket == "none" else "no QUIC connection"
        with pytest.raises(QuicPathError, match=expected):
            await accepting
        # whatever the callee sent back carries no stream byte, and ends the connection
        raw.settimeout(0.5)
        replies = 0
        try:
            while True:
                data, _ = raw.recvfrom(65536)
                replies += 1
                client.receive_datagram(data, callee.local_address, time.monotonic())
        except TimeoutError:
            pass
        assert not client.received and not client.handshake_done
        if ticket == "none":
            assert client.terminated or client.conn._close_event is not None
        else:
            assert replies == 0  # not a byte back to another session's hello
    finally:
        raw.close()
        await callee.close()


async def stand_in_server(sock: socket.socket, stop: asyncio.Event) -> bytes:
    """A server of the attacker's: aioquic's, speaking the 0-RTT protocol, with no ticket to
    resume; it completes a full handshake if the client lets it. What stream bytes it read."""
    read = bytearray()
    conn: QuicConnection | None = None
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 0.05)
        except TimeoutError:
            if conn is not None:
                conn.handle_timer(now=time.monotonic())
        else:
            if conn is None:
                header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                conn = QuicConnection(configuration=configuration(False),
                                      original_destination_connection_id=header.destination_cid)
            conn.receive_datagram(data, addr, now=time.monotonic())
        if conn is not None:
            while (event := conn.next_event()) is not None:
                if isinstance(event, events.StreamDataReceived):
                    read += event.data
            for out, to in conn.datagrams_to_send(now=time.monotonic()):
                sock.sendto(out, to)
    return bytes(read)


async def test_a_stand_in_without_the_key_reads_nothing_and_the_caller_fails() -> None:
    shared, transcript = session_material()
    caller = await MediaSocket.open("127.0.0.1", 0)
    sock = udp_socket()
    stop = asyncio.Event()
    serving = asyncio.ensure_future(stand_in_server(sock, stop))
    try:
        raw = await quic_connect(caller, sock.getsockname(), initiator=True, timeout=2.0,
                                 session_ticket=session_ticket(shared, transcript),
                                 zero_rtt=True)
        secured = await caller_first(raw, shared, transcript, True,
                                        InviteSalt(new_path_salt()))
        await secured.send(b"the file's first bytes")
        with pytest.raises(QuicPathError, match="without the session's key"):
            await asyncio.wait_for(secured.recv(), 5)
    finally:
        stop.set()
        read = await serving
        sock.close()
        await caller.close()
    # the 0-RTT bytes were under the session's key: the stand-in read none of them
    assert b"the file's first bytes" not in read and not read


async def test_a_replayed_first_flight_is_refused_before_the_callee_sends() -> None:
    host = loopback_ips(1)[0]
    shared, transcript = session_material()
    salt = new_path_salt()
    caller_salts, callee_salts = InviteSalt(salt), InviteSalt(salt)

    # path 1: genuine, recorded by the attacker that carries it
    caller_raw, callee_raw = await tcp_stream_pair(host)
    first_flight = record_sends(caller_raw)
    caller = await caller_first(caller_raw, shared, transcript, True, caller_salts)
    await caller.send(b"SELECT and the first bytes")
    callee = await caller_first(callee_raw, shared, transcript, False, callee_salts)
    assert await callee.recv() == b"SELECT and the first bytes"

    # path 2: the attacker plays the caller's first flight to the callee again
    attacker, callee_raw2 = await tcp_stream_pair(host)
    await attacker.send(bytes(first_flight))
    with pytest.raises(SecureStreamError) as refused:
        await caller_first(callee_raw2, shared, transcript, False, callee_salts)
    assert refused.value.reason == "replayed_salt"
    leaked = bytearray()
    while data := await asyncio.wait_for(attacker.recv(), 5):
        leaked += data
    assert not leaked, f"the callee sent {len(leaked)} bytes on the replayed path"
    for stream in (caller, callee, attacker):
        await stream.close()
