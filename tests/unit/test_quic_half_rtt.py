"""The callee's first bytes on a punched path go with its QUIC handshake flight (0.5-RTT):
the sans-IO cores, datagrams carried by hand, flight by flight. One round trip after the
client's Initial, the client has completed the handshake and holds what the server wrote, so
the caller can check the callee's ``CONFIRM`` and select the path a round trip earlier than
when the server spoke only after the client's own first stream bytes."""

from __future__ import annotations

from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

from overlay.media.quic.core import (
    QUIC_CID_BYTES,
    QuicPathError,
    QuicStreamCore,
    configuration,
)

CLIENT = ("198.18.0.1", 4000)
SERVER = ("198.18.0.2", 4000)


def carry(sender: QuicStreamCore, receiver: QuicStreamCore, at: float,
          from_addr: tuple[str, int]) -> int:
    """Every datagram ``sender`` has ready, delivered to ``receiver``; how many."""
    out = sender.datagrams_to_send(at)
    for data, _ in out:
        receiver.receive_datagram(data, from_addr, at)
    return len(out)


def server_for(initial: bytes) -> QuicStreamCore:
    header = pull_quic_header(Buffer(data=initial), host_cid_length=QUIC_CID_BYTES)
    conn = QuicConnection(configuration=configuration(False),
                          original_destination_connection_id=header.destination_cid)
    return QuicStreamCore(conn, is_client=False)


def test_the_server_speaks_with_its_handshake_flight() -> None:
    client = QuicStreamCore(QuicConnection(configuration=configuration(True)), is_client=True)
    client.connect(SERVER, 0.0)
    assert not client.stream_open
    try:
        client.write(b"too early")
        raise AssertionError("the client wrote before the server opened the stream")
    except QuicPathError:
        pass
    first = client.datagrams_to_send(0.0)
    server = server_for(first[0][0])
    for data, _ in first:  # half a round trip: the Initial reaches the server
        server.receive_datagram(data, CLIENT, 0.05)
    assert server.stream_open and not server.handshake_done
    server.write(b"salt+CONFIRM")  # the callee's secure() writes at once
    assert carry(server, client, 0.1, SERVER)  # one round trip after the Initial
    assert client.handshake_done and client.stream_open
    assert bytes(client.received) == b"salt+CONFIRM"
    # the client answers on the same stream; the server completes with the client's flight
    client.write(b"SELECT")
    carry(client, server, 0.15, CLIENT)
    assert server.handshake_done and bytes(server.received) == b"SELECT"


def test_a_client_refuses_a_stream_without_the_preamble() -> None:
    client = QuicStreamCore(QuicConnection(configuration=configuration(True)), is_client=True)
    client.connect(SERVER, 0.0)
    first = client.datagrams_to_send(0.0)
    header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=QUIC_CID_BYTES)
    # a server that is not ours: it opens the stream and writes no preamble
    raw = QuicConnection(configuration=configuration(False),
                         original_destination_connection_id=header.destination_cid)
    for data, _ in first:
        raw.receive_datagram(data, CLIENT, now=0.05)
    raw.send_stream_data(1, b"HTTP/1.1 200 OK\r\n\r\n")
    for data, _ in raw.datagrams_to_send(now=0.1):
        client.receive_datagram(data, SERVER, 0.1)
    assert not client.stream_open and client.error == "not an overlay media stream"
