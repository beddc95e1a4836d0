"""0-RTT media paths (issue 13): the caller's QUIC client resumes a ticket both ends derive
from the session secret (:mod:`overlay.media.quic.ticket`), so its first flight already
carries its stream: the preamble, its path salt and confirmation, then whatever it writes
(``SELECT`` and the file's first bytes). The callee's server reads them before it has sent
anything. A client that does not ask for 0-RTT is served as before."""

from __future__ import annotations

import asyncio
import os

import pytest
from aioquic.quic.connection import QuicConnection

from overlay.media.media_socket import MediaSocket
from overlay.media.quic.connect import quic_connect
from overlay.media.quic.core import (
    ALPN,
    ALPN_ZERO_RTT,
    PREAMBLE,
    QuicStreamCore,
    configuration,
)
from overlay.media.quic.stream import QuicByteStream
from overlay.media.quic.ticket import session_ticket
from overlay.media.secure_stream import InviteSalt, SecureStreamError, new_path_salt
from tests.helpers.netutil import wait_for
from tests.helpers.zero_rtt import caller_first, session_material, zero_rtt_quic

CALLER = ("198.18.0.1", 4433)
CALLEE = ("198.18.0.2", 4433)


def server_core(shared: bytes, transcript: bytes, first: bytes) -> QuicStreamCore:
    ticket = session_ticket(shared, transcript)
    conn = QuicConnection(configuration=configuration(False),
                          original_destination_connection_id=first,
                          session_ticket_fetcher=lambda i: ticket if i == ticket.ticket else None)
    return QuicStreamCore(conn, is_client=False)


def client_core(shared: bytes, transcript: bytes) -> QuicStreamCore:
    """A 0-RTT client, its handshake begun towards :data:`CALLEE`."""
    client = QuicStreamCore(QuicConnection(configuration=configuration(
        True, session_ticket=session_ticket(shared, transcript))), is_client=True)
    client.connect(CALLEE, 0.0)
    return client


def test_the_callers_bytes_ride_in_its_first_flight() -> None:
    shared, transcript = session_material()
    client = client_core(shared, transcript)
    client.write(b"salt, CONFIRM, SELECT, HEADER, first bytes")
    first_flight = client.datagrams_to_send(0.0)
    server = server_core(shared, transcript, client.conn.original_destination_connection_id)
    for data, _ in first_flight:
        server.receive_datagram(data, CALLER, 0.0)
    # before the server sent a single datagram, it holds the caller's bytes
    assert server.zero_rtt and server.stream_open and not server.handshake_done
    assert bytes(server.received) == b"salt, CONFIRM, SELECT, HEADER, first bytes"
    # the handshake then completes, resumed, on both ends
    for _ in range(4):
        for data, _ in server.datagrams_to_send(0.01):
            client.receive_datagram(data, CALLEE, 0.02)
        for data, _ in client.datagrams_to_send(0.03):
            server.receive_datagram(data, CALLER, 0.04)
    assert client.handshake_done and server.handshake_done
    assert client.conn.tls.session_resumed and server.conn.tls.session_resumed


@pytest.mark.parametrize("lost", ["first", "second"])
def test_the_first_flight_survives_a_lost_datagram_without_a_retransmission(lost: str) -> None:
    # a loss there would cost a whole PTO: each of its datagrams goes out twice
    shared, transcript = session_material()
    client = client_core(shared, transcript)
    client.write(b"SELECT, HEADER, first bytes")
    flight = client.datagrams_to_send(0.0)
    assert len(flight) % 2 == 0 and flight[0::2] == flight[1::2]
    server = server_core(shared, transcript, client.conn.original_destination_connection_id)
    for data, _ in flight[1::2] if lost == "first" else flight[0::2]:
        server.receive_datagram(data, CALLER, 0.0)
    assert bytes(server.received) == b"SELECT, HEADER, first bytes"
    for data, _ in server.datagrams_to_send(0.01):
        client.receive_datagram(data, CALLEE, 0.02)
    # once the handshake is done, no more copies
    assert client.handshake_done
    client.write(b"more")
    after = client.datagrams_to_send(0.03)
    assert len({d for d, _ in after}) == len(after)


def test_a_client_without_the_ticket_is_served_as_before() -> None:
    shared, transcript = session_material()
    client = QuicStreamCore(QuicConnection(configuration=configuration(True)), is_client=True)
    assert configuration(True).alpn_protocols == [ALPN]
    assert configuration(False).alpn_protocols == [ALPN_ZERO_RTT, ALPN]
    client.connect(CALLEE, 0.0)
    server = server_core(shared, transcript, client.conn.original_destination_connection_id)
    for data, _ in client.datagrams_to_send(0.0):
        server.receive_datagram(data, CALLER, 0.0)
    # the server opened its stream (0.5-RTT) with the preamble, as a 1-RTT path does
    assert not server.zero_rtt and server.stream_open and server.stream_id == 1
    for data, _ in server.datagrams_to_send(0.01):
        client.receive_datagram(data, CALLEE, 0.02)
    assert client.stream_open and client.handshake_done and not client.received
    assert PREAMBLE  # stripped by the client's check


async def test_a_zero_rtt_path_carries_a_mebibyte_both_ways() -> None:
    shared, transcript = session_material()
    salt = new_path_salt()
    async with zero_rtt_quic(shared, transcript) as (client_raw, server):
        caller = await caller_first(client_raw, shared, transcript, True, InviteSalt(salt))
        assert not caller.framer.confirmed  # it returned before the callee said anything
        payload = os.urandom(1 << 20)
        sending = asyncio.ensure_future(caller.send(payload))
        callee = await caller_first(await server, shared, transcript, False, InviteSalt(salt))
        got = bytearray()
        while len(got) < len(payload):
            got += await asyncio.wait_for(callee.recv(), 10)
        await sending
        assert bytes(got) == payload
        await callee.send(b"ACK")
        assert await asyncio.wait_for(caller.recv(), 10) == b"ACK"
        assert caller.framer.confirmed
        await asyncio.gather(caller.close(), callee.close())


async def test_a_caller_refuses_a_callee_salt_the_invite_does_not_derive() -> None:
    shared, transcript = session_material()
    async with zero_rtt_quic(shared, transcript) as (client_raw, server):
        caller = await caller_first(client_raw, shared, transcript, True,
                                    InviteSalt(new_path_salt()))
        # the other end holds the session's key (its QUIC resumed) but sends another salt
        callee_raw = await server
        await callee_raw.send(os.urandom(16))
        with pytest.raises(SecureStreamError) as refused:
            await asyncio.wait_for(caller.recv(), 10)
        assert refused.value.reason == "bad_salt"
        callee_raw.abort("test over")
        await caller.discard()


async def test_back_to_back_sessions_with_one_peer_each_get_their_connection() -> None:
    """Two sends in a row to one peer: the first session's QUIC connection is still open (its
    receiver finishing) when the second session's Initial comes from the same address under
    a new connection id. The Initial starts the second session's connection; routed to the
    first one by address, it was dropped there and the second handshake failed after 5 s
    (the bench's 11-19 s sends)."""
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    streams: list[QuicByteStream] = []
    try:
        for word in (b"first", b"second"):
            ticket = session_ticket(*session_material())
            server = asyncio.ensure_future(quic_connect(b, a.local_address, initiator=False,
                                                        session_ticket=ticket, timeout=3.0))
            await asyncio.sleep(0)
            client = await quic_connect(a, b.local_address, initiator=True,
                                        session_ticket=ticket, zero_rtt=True)
            streams.append(client)
            await client.send(word)
            callee = await asyncio.wait_for(server, 5.0)
            streams.append(callee)
            assert await asyncio.wait_for(callee.recv(), 5.0) == word
    finally:
        for stream in streams:
            stream.abort("test over")
        await a.close()
        await b.close()


async def test_another_sessions_client_hello_does_not_take_our_acceptor() -> None:
    """A retransmitted ClientHello of another session from the same peer (a 0-RTT handshake
    that failed there, still retransmitting) reaches our acceptor first: it is not ours (its
    ticket is the other session's) and is left alone, and our own client still connects. It
    used to be taken, fail to resume and close ``code 12``, and our session's path with it."""
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    streams: list[QuicByteStream] = []
    try:
        ours, theirs = session_ticket(*session_material()), session_ticket(*session_material())
        server = asyncio.ensure_future(quic_connect(b, a.local_address, initiator=False,
                                                    session_ticket=ours, timeout=3.0))
        await asyncio.sleep(0)
        stale = await quic_connect(a, b.local_address, initiator=True, session_ticket=theirs,
                                   zero_rtt=True)
        streams.append(stale)
        await wait_for(lambda: b.stats.get("quic_early", 0) >= 1, 2.0)  # left, not taken
        assert not server.done()
        client = await quic_connect(a, b.local_address, initiator=True, session_ticket=ours,
                                    zero_rtt=True)
        streams.append(client)
        await client.send(b"ours")
        callee = await asyncio.wait_for(server, 5.0)
        streams.append(callee)
        assert await asyncio.wait_for(callee.recv(), 5.0) == b"ours"
    finally:
        for stream in streams:
            stream.abort("test over")
        await a.close()
        await b.close()
