"""Media transports on loopback: end-to-end secure framing, UDP binding, hole punching and QUIC.

Real sockets throughout; the binding responder is a small UDP server built from the DHT
envelope functions (``tests/helpers/media_driver.py``), and one test asks a real in-process
``Supernode``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import struct
import time
from collections.abc import AsyncIterator

import pytest

from overlay.core.identity import Identity
from overlay.media import secure_stream as ss
from overlay.media.binding import (
    BINDING_RTO_S,
    BINDING_TIMEOUT_S,
    BindingTransaction,
    binding_timing,
    classify,
    nat_type,
    parse_binding,
    reflexive_address,
    settle,
)
from overlay.media.media_socket import MediaSocket
from overlay.media.punch import (
    ACK,
    PROBE,
    Puncher,
    PunchFailed,
    decode_probe,
    encode_probe,
    punch_feasible,
    punch_key,
)
from overlay.media.punch_io import punch
from overlay.media.quic.congestion import MediaCongestionControl
from overlay.media.quic.connect import quic_connect, udp_path
from overlay.media.quic.core import QuicPathError
from overlay.media.quic.stream import SEND_HIGH_WATER, QuicByteStream
from overlay.media.secure_stream import (
    MAX_PLAINTEXT,
    SecureFramer,
    SecureStreamError,
    derive_keys,
    secure,
)
from overlay.media.stream import ByteStream, TcpByteStream
from tests.helpers.media_driver import BindingResponder, start_responder
from tests.helpers.netutil import loopback_ips

MiB = 1 << 20


def session_material() -> tuple[bytes, bytes, bytes]:
    """session id, X25519-like shared secret, transcript hash."""
    return os.urandom(16), os.urandom(32), hashlib.blake2b(os.urandom(64),
                                                          digest_size=32).digest()


def framers(secret: bytes | None = None, transcript: bytes | None = None
            ) -> tuple[SecureFramer, SecureFramer]:
    _, s, t = session_material()
    secret, transcript = secret or s, transcript or t
    salts = os.urandom(2 * ss.PATH_SALT_BYTES)
    a = SecureFramer(*derive_keys(secret, transcript, True, salts), transcript)
    b = SecureFramer(*derive_keys(secret, transcript, False, salts), transcript)
    return a, b


def expect_error(reason: str, fn: object, *args: object) -> SecureStreamError:
    with pytest.raises(SecureStreamError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.reason == reason, info.value
    return info.value


# ---------------------------------------------------------------------- secure framing


def test_keys_are_per_direction_and_bound_to_secret_and_transcript() -> None:
    _, secret, transcript = session_material()
    salts = os.urandom(32)
    i_send, i_recv = derive_keys(secret, transcript, True, salts)
    r_send, r_recv = derive_keys(secret, transcript, False, salts)
    assert (i_send, i_recv) == (r_recv, r_send)
    assert i_send != i_recv
    assert derive_keys(secret, b"\x01" * 32, True, salts) != (i_send, i_recv)
    assert derive_keys(os.urandom(32), transcript, True, salts) != (i_send, i_recv)
    expect_error("bad_key", derive_keys, bytes(32), transcript, True, salts)
    expect_error("bad_key", derive_keys, secret, transcript, True, b"")


def test_each_path_salt_changes_both_keys() -> None:
    """Either side's salt alone gives both directions new keys: a path never shares keys
    with another path of the same session."""
    _, secret, transcript = session_material()
    salts = os.urandom(32)
    keys = derive_keys(secret, transcript, True, salts)
    for changed in (os.urandom(16) + salts[16:], salts[:16] + os.urandom(16)):
        other = derive_keys(secret, transcript, True, changed)
        assert other[0] != keys[0] and other[1] != keys[1]


def test_confirmation_then_messages_both_ways() -> None:
    a, b = framers()
    assert not a.confirmed and not b.confirmed
    assert b.feed(a.hello()) == [] and b.confirmed
    assert a.hello() == b""  # once
    assert a.feed(b.seal(b"first") + b.seal(b"")) == [b"first", b""]  # hello prepended
    assert a.confirmed
    wire = a.seal(b"x" * MAX_PLAINTEXT) + a.seal(b"y")
    # byte by byte: framing copes with any split
    got = [m for i in range(len(wire)) for m in b.feed(wire[i:i + 1])]
    assert got == [b"x" * MAX_PLAINTEXT, b"y"]
    with pytest.raises(ValueError):
        a.seal(b"z" * (MAX_PLAINTEXT + 1))


def test_wrong_keys_cannot_confirm() -> None:
    _, secret, transcript = session_material()
    a, _ = framers(secret, transcript)
    hello = a.hello()
    _, stranger = framers(os.urandom(32), transcript)
    expect_error("auth", stranger.feed, hello)
    # the right keys but another transcript (a replayed answer, say): refused too
    _, other = framers(secret, os.urandom(32))
    expect_error("auth", other.feed, hello)
    # same keys, confirmation naming another transcript
    salts = os.urandom(32)
    keys = derive_keys(secret, transcript, False, salts)
    liar = SecureFramer(*derive_keys(secret, transcript, True, salts), os.urandom(32))
    expect_error("bad_confirm", SecureFramer(*keys, transcript).feed, liar.hello())


def test_reflected_frames_do_not_authenticate() -> None:
    a, b = framers()
    b.feed(a.hello())
    expect_error("auth", a.feed, a.seal(b"echo"))  # a's own frames sent back to it


def test_data_before_confirmation_is_refused() -> None:
    a, b = framers()
    forged = a._frame(ss.DATA, b"sneaky")  # a DATA frame in the confirmation's place
    expect_error("unconfirmed", b.feed, forged)


@pytest.mark.parametrize("position", [0, 3, 4, 10, -1])
def test_tampering_is_detected(position: int) -> None:
    a, b = framers()
    b.feed(a.hello())
    frame = bytearray(a.seal(b"payload bytes"))
    frame[position] ^= 0x01
    with pytest.raises(SecureStreamError) as info:
        b.feed(bytes(frame))
        b.feed_eof()
    assert info.value.reason in {"auth", "oversized", "truncated"}
    # a dead framer stays dead
    with pytest.raises(SecureStreamError):
        b.feed(b"")


def test_replay_and_reorder_are_detected() -> None:
    a, b = framers()
    b.feed(a.hello())
    f1, f2 = a.seal(b"one"), a.seal(b"two")
    assert b.feed(f1) == [b"one"]
    expect_error("auth", b.feed, f1)  # replayed
    a2, b2 = framers()
    b2.feed(a2.hello())
    g1, g2 = a2.seal(b"one"), a2.seal(b"two")
    expect_error("auth", b2.feed, g2 + g1)  # reordered
    assert f2 and g1  # (used)


def test_truncation_is_detected() -> None:
    a, b = framers()
    b.feed(a.hello())
    frame = a.seal(b"cut short")
    b.feed(frame[:-3])
    expect_error("truncated", b.feed_eof)
    # whole frames but no CLOSE: the end of the stream is not the end of the data
    a, b = framers()
    b.feed(a.hello() + a.seal(b"all of it?"))
    expect_error("truncated", b.feed_eof)
    # with CLOSE: a clean end, and nothing may follow it
    a, b = framers()
    assert b.feed(a.seal(b"done") + a.close()) == [b"done"] and b.peer_closed
    b.feed_eof()
    expect_error("after_close", b.feed, b"\x00")
    expect_error("closed", a.seal, b"more")


def test_oversized_frame_is_refused_before_buffering() -> None:
    a, b = framers()
    b.feed(a.hello())
    header = struct.pack(">I", 1 + MAX_PLAINTEXT + ss.TAG_BYTES + 1)
    err = expect_error("oversized", b.feed, header)  # the 4 header bytes are enough
    assert "bytes" in str(err)
    assert len(b._buffer) == 0
    small = SecureFramer(os.urandom(32), os.urandom(32), os.urandom(32), max_plaintext=1024)
    expect_error("oversized", small.feed, struct.pack(">I", 1 + 2048 + ss.TAG_BYTES))


class Recorder:
    """A ByteStream wrapper that keeps a copy of every byte that crossed it."""

    def __init__(self, inner: ByteStream) -> None:
        self.inner = inner
        self.path = inner.path
        self.sent = bytearray()
        self.received = bytearray()

    async def send(self, data: bytes) -> None:
        self.sent += data
        await self.inner.send(data)

    async def recv(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.recv(max_bytes)
        self.received += data
        return data

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[TcpByteStream, TcpByteStream]]:
    accepted: asyncio.Queue[TcpByteStream] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(TcpByteStream(reader, writer))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = TcpByteStream(reader, writer)
    other = await asyncio.wait_for(accepted.get(), 5)
    yield client, other
    for s in (client, other):
        await s.close()
    server.close()
    await server.wait_closed()


async def drain(stream: ByteStream) -> bytes:
    out = bytearray()
    while chunk := await stream.recv(65536):
        out += chunk
    return bytes(out)


async def test_secure_over_tcp_carries_only_ciphertext(
    tcp_pair: tuple[TcpByteStream, TcpByteStream],
) -> None:
    _, secret, transcript = session_material()
    raw_a = Recorder(tcp_pair[0])
    a, b = await asyncio.gather(secure(raw_a, secret, transcript, True, 5),
                                secure(tcp_pair[1], secret, transcript, False, 5))
    assert a.path == b.path == "direct-tcp"
    marker = b"PLAINTEXT-MARKER-" * 64
    payload = marker + os.urandom(MiB)
    await asyncio.gather(a.send(payload), b.send(b"hello back"))
    assert await b.recv(len(marker)) == marker
    rest = bytearray()
    while len(rest) < MiB:
        rest += await b.recv(65536)
    assert bytes(rest) == payload[len(marker):]
    assert await a.recv() == b"hello back"
    await a.close()
    assert await b.recv() == b""  # the authenticated CLOSE
    await b.close()
    assert b"PLAINTEXT-MARKER" not in raw_a.sent
    assert b"hello back" not in raw_a.received
    # 1 MiB in 16 KiB frames: 64 frames of overhead 4 + 1 + 16, and the confirmation
    assert len(raw_a.sent) < len(payload) + 80 * 21 + 200


async def test_two_raced_paths_have_their_own_keys() -> None:
    """Two paths of one session (same secret and transcript), secured at once: each begins
    with its own salt and its first encrypted frames (the confirmations, same plaintext,
    nonce 0) differ, so the keys differ; each path still carries the session."""
    _, secret, transcript = session_material()
    accepted: asyncio.Queue[TcpByteStream] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(TcpByteStream(reader, writer))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dialled = [Recorder(TcpByteStream(*await asyncio.open_connection("127.0.0.1", port)))
               for _ in range(2)]
    answered = [await asyncio.wait_for(accepted.get(), 5) for _ in range(2)]
    paths = await asyncio.gather(*(secure(d, secret, transcript, True, 5) for d in dialled),
                                 *(secure(a, secret, transcript, False, 5) for a in answered))
    salt = ss.PATH_SALT_BYTES
    first = [bytes(d.sent[salt:salt + 4 + 74]) for d in dialled]
    assert first[0][:4] == first[1][:4] == struct.pack(">I", 74)  # a confirmation each
    assert first[0] != first[1]
    assert dialled[0].sent[:salt] != dialled[1].sent[:salt]
    assert paths[0].framer._send_key != paths[1].framer._send_key  # type: ignore[attr-defined]
    for i in range(2):
        await paths[i].send(b"path %d" % i)
        assert await paths[2 + i].recv() == b"path %d" % i
    for p in paths:
        await p.close()
    server.close()
    await server.wait_closed()


async def test_secure_with_wrong_keys_fails_on_both_sides(
    tcp_pair: tuple[TcpByteStream, TcpByteStream],
) -> None:
    _, secret, transcript = session_material()
    results = await asyncio.gather(
        secure(tcp_pair[0], secret, transcript, True, 3),
        secure(tcp_pair[1], os.urandom(32), transcript, False, 3),
        return_exceptions=True)
    assert all(isinstance(r, SecureStreamError) for r in results), results


async def test_secure_times_out_against_a_silent_peer(
    tcp_pair: tuple[TcpByteStream, TcpByteStream],
) -> None:
    _, secret, transcript = session_material()
    started = time.monotonic()
    with pytest.raises(SecureStreamError) as info:
        await secure(tcp_pair[0], secret, transcript, True, 0.3)
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 1.0


async def test_secure_detects_a_cut_stream(
    tcp_pair: tuple[TcpByteStream, TcpByteStream],
) -> None:
    _, secret, transcript = session_material()
    a, b = await asyncio.gather(secure(tcp_pair[0], secret, transcript, True, 5),
                                secure(tcp_pair[1], secret, transcript, False, 5))
    await a.send(b"partial")
    await tcp_pair[0].close()  # the path dies without the CLOSE frame
    assert await b.recv() == b"partial"
    with pytest.raises(SecureStreamError) as info:
        await b.recv()
    assert info.value.reason == "truncated"


# ------------------------------------------------------------------------------- binding


def test_classify() -> None:
    local = ("192.168.1.2", 4000)
    assert classify(local, [None, None]) == "no-udp"
    assert classify(local, [("1.2.3.4", 5000), ("1.2.3.4", 5000)]) == "cone"
    assert classify(local, [("1.2.3.4", 5000), ("1.2.3.4", 5001)]) == "symmetric"
    assert classify(local, [("1.2.3.4", 5000), None]) == "unknown"
    assert classify(local, [local, local]) == "public"
    assert classify(local, [local, None]) == "public"


def test_binding_timing_follows_the_rtt_and_is_unchanged_on_a_fast_link() -> None:
    assert binding_timing(None) == (BINDING_RTO_S, BINDING_TIMEOUT_S)
    assert binding_timing(0.002) == (BINDING_RTO_S, BINDING_TIMEOUT_S)  # the LAN's: as before
    rto, window = binding_timing(0.4)  # 100 ms each way on both ends' links
    assert rto > 0.4  # no retransmission before the first answer can be back
    assert window >= 3 * rto + 0.4  # the third transmission can still be answered
    assert binding_timing(5.0)[1] <= 6.0  # bounded


def test_a_lone_answer_keeps_the_type_two_answers_gave_when_it_agrees() -> None:
    m, other = ("1.2.3.4", 5000), ("1.2.3.4", 5001)
    assert settle("cone", [m], "unknown", [m, None]) == "cone"
    assert settle("cone", [m], "unknown", [None, other]) == "unknown"  # remapped: not sure
    assert settle("symmetric", [m, other], "unknown", [("1.2.3.4", 5002), None]) == "symmetric"
    assert settle("unknown", [m], "unknown", [m, None]) == "unknown"
    assert settle("cone", [m], "no-udp", [None, None]) == "no-udp"  # none is news, not noise
    assert settle("symmetric", [m], "cone", [m, m]) == "cone"  # two answers decide


def test_binding_transaction_retransmits_then_times_out() -> None:
    txn = BindingTransaction(Identity.generate(), ("10.0.0.1", 1), os.urandom(32),
                             timeout=2.0, now=0.0, rto=0.3, attempts=3)
    sent = [t for t in (0.0, 0.1, 0.3, 0.5, 0.9, 1.5, 1.9) if txn.datagrams_to_send(t)]
    assert sent == [0.0, 0.3, 0.9]
    txn.handle_timer(2.0)
    assert txn.datagrams_to_send(2.0) == [] and txn.done and txn.result is None
    assert parse_binding({"host": "1.2.3.4", "port": 7}) == ("1.2.3.4", 7)
    for bad in ({"host": "h", "port": 0}, {"host": 3, "port": 7}, ["1.2.3.4", 7], None):
        assert parse_binding(bad) is None


@pytest.fixture
async def media() -> AsyncIterator[MediaSocket]:
    sock = await MediaSocket.open("127.0.0.1", 0)
    yield sock
    await sock.close()


@pytest.fixture
async def responders() -> AsyncIterator[list[BindingResponder]]:
    ips = loopback_ips(2)
    out = [await start_responder(ip) for ip in ips]
    yield out
    for r in out:
        r.close()


def where(r: BindingResponder) -> tuple[str, int]:
    assert r.transport is not None
    name = r.transport.get_extra_info("sockname")
    return (name[0], name[1])


async def test_reflexive_address_from_a_responder(
    media: MediaSocket, responders: list[BindingResponder],
) -> None:
    r = responders[0]
    me = Identity.generate()
    mapped = await reflexive_address(media, me, where(r), r.identity.public_key, timeout=2)
    assert mapped == media.local_address  # loopback: no NAT
    # the node id works as well as the key
    assert await reflexive_address(media, me, where(r), r.identity.node_id, 2) == mapped


async def test_binding_ignores_answers_from_the_wrong_node(
    media: MediaSocket, responders: list[BindingResponder],
) -> None:
    r = responders[0]
    started = time.monotonic()
    mapped = await reflexive_address(media, Identity.generate(), where(r), os.urandom(32),
                                     timeout=0.8)
    assert mapped is None and r.answered >= 1
    assert 0.7 < time.monotonic() - started < 1.5


async def test_nat_type_public_and_no_udp(
    media: MediaSocket, responders: list[BindingResponder],
) -> None:
    me = Identity.generate()
    servers = [(where(r), r.identity.public_key) for r in responders]
    report = await nat_type(media, me, servers, timeout=1.0)
    assert report.nat == "public" and report.mapped == (media.local_address,) * 2
    assert report.candidates == [media.local_address]
    for r in responders:
        r.silent = True
    report = await nat_type(media, me, servers, timeout=0.5)
    assert report.nat == "no-udp" and report.mapped == (None, None)
    assert report.elapsed < 1.0  # asked in parallel


async def test_a_binding_waits_as_long_as_the_supernodes_rtt_needs(
    media: MediaSocket, responders: list[BindingResponder],
) -> None:
    """A supernode 1.6 s away (the link's RTT, as the client measured it) answers after the
    1.5 s a binding waits by default: with its RTT known, the binding gets the answer."""
    me = Identity.generate()
    far = responders[0]
    far.delay_s = 1.6
    servers = [(where(far), far.identity.public_key)]
    blind = await nat_type(media, me, servers, timeout=BINDING_TIMEOUT_S)
    assert blind.mapped == (None,) and blind.nat == "no-udp"
    informed = await nat_type(media, me, servers, timeout=BINDING_TIMEOUT_S,
                              rtts={far.identity.public_key: 1.6})
    assert informed.mapped == (media.local_address,) and informed.nat == "public"
    assert 1.5 < informed.elapsed < 2.5


async def test_binding_against_a_real_supernode(media: MediaSocket) -> None:
    from overlay.node.daemon import NodeOptions
    from overlay.node.supernode import Supernode

    (ip,) = loopback_ips(1)
    node = Supernode(NodeOptions(listen=(ip, 4100)))
    await node.start()
    try:
        mapped = await reflexive_address(media, Identity.generate(), (ip, 4100),
                                         node.identity.public_key, timeout=3)
        assert mapped == media.local_address
    finally:
        await node.stop()


# ------------------------------------------------------------------------------- punching


def test_probes_are_authenticated() -> None:
    key, other = os.urandom(32), os.urandom(32)
    sid, txid = os.urandom(16), os.urandom(8)
    wire = encode_probe(key, PROBE, 0, sid, txid)
    assert len(wire) == 46
    probe = decode_probe(key, wire)
    assert probe is not None and (probe.kind, probe.role, probe.session_id, probe.txid) == (
        PROBE, 0, sid, txid)
    assert decode_probe(other, wire) is None
    assert decode_probe(key, wire[:-1] + bytes([wire[-1] ^ 1])) is None
    assert decode_probe(key, wire + b"x") is None


def test_puncher_schedule_success_and_failure() -> None:
    sid, key = os.urandom(16), os.urandom(32)
    a = Puncher(sid, key, [("10.0.0.1", 1000)], [("10.9.9.9", 2000), ("10.0.0.1", 1000)],
                initiator=True, now=0.0, timeout=2.0)
    assert a.targets == [("10.9.9.9", 2000)]  # our own address is not a target
    rounds = [t / 1000 for t in range(0, 2000) if a.datagrams_to_send(t / 1000)]
    gaps = [round(y - x, 3) for x, y in itertools.pairwise(rounds)]
    # every 100 ms during the first second, then every 200 ms
    assert all(0.1 <= g <= 0.102 for g in gaps[:10]), gaps
    assert all(0.2 <= g <= 0.202 for g in gaps[10:]) and len(gaps) == 14, gaps
    a.handle_timer(2.0)
    assert a.datagrams_to_send(2.0) == [] and a.state == "failed"
    # the responder answers the initiator's probe; the ack completes the initiator
    a = Puncher(sid, key, [], [("10.9.9.9", 2000)], initiator=True, now=0.0)
    b = Puncher(sid, key, [], [("10.0.0.1", 1000)], initiator=False, now=0.0)
    (probe, _), = a.datagrams_to_send(0.0)
    b.receive_datagram(probe, ("10.0.0.1", 1000), 0.01)
    (ack, to), = b.datagrams_to_send(0.01)
    assert to == ("10.0.0.1", 1000) and b.state == "succeeded"
    a.receive_datagram(ack, ("10.9.9.9", 2000), 0.02)
    assert a.datagrams_to_send(0.02) == [] and a.state == "succeeded"
    assert a.selected == ("10.9.9.9", 2000) and a.verified == {("10.9.9.9", 2000): "ack"}
    assert a.rtt == pytest.approx(0.02)
    # a reflected probe (our own role) and an ack for a probe we never sent are refused
    c = Puncher(sid, key, [], [("10.9.9.9", 2000)], initiator=True, now=0.0)
    c.handle_timer(0.0)
    c.datagrams_to_send(0.0)  # its first round of probes: what follows is only answers
    c.receive_datagram(probe, ("10.6.6.6", 1), 0.0)
    assert c.datagrams_to_send(0.0) == [] and c.rejected["reflected"] == 1
    forged = encode_probe(key, ACK, 1, sid, os.urandom(8))
    c.receive_datagram(forged, ("10.6.6.6", 1), 0.0)
    assert c.datagrams_to_send(0.0) == [] and c.rejected["unknown_txid"] == 1
    assert c.state == "punching"


def test_puncher_learns_peer_reflexive_address() -> None:
    sid, key = os.urandom(16), os.urandom(32)
    b = Puncher(sid, key, [], [("198.51.100.7", 4000)], initiator=False, now=0.0)
    a = Puncher(sid, key, [], [("203.0.113.5", 5000)], initiator=True, now=0.0)
    (probe, _), = a.datagrams_to_send(0.0)
    b.receive_datagram(probe, ("198.51.100.7", 4999), 0.05)  # from a port not announced
    b.datagrams_to_send(0.05)  # the ack
    assert b.learned == [("198.51.100.7", 4999)] and b.selected == ("198.51.100.7", 4999)
    assert b.verified == {("198.51.100.7", 4999): "probe"}
    assert b.datagrams_to_send(0.1) == []  # succeeded: no more probes, only answers
    b.receive_datagram(probe, ("198.51.100.7", 4999), 0.2)
    assert b.datagrams_to_send(0.2)  # still answered


def test_punch_feasible() -> None:
    assert punch_feasible("cone", "cone") and punch_feasible("public", "symmetric")
    assert not punch_feasible("symmetric", "symmetric")
    assert not punch_feasible("no-udp", "cone")
    # a router mapping of one side's UDP socket: its port takes the other side's probes
    assert punch_feasible("symmetric", "symmetric", mapped=True)
    assert not punch_feasible("no-udp", "symmetric", mapped=True)


async def punched_pair(
    a: MediaSocket, b: MediaSocket, remote_for_a: list[tuple[str, int]] | None = None,
    timeout: float = 3.0,
) -> tuple[tuple[str, int], tuple[str, int], bytes, bytes, bytes]:
    sid, secret, transcript = session_material()
    key = punch_key(secret, transcript)
    pa, pb = await asyncio.gather(
        punch(a, sid, key, True, [a.local_address],
              remote_for_a or [b.local_address], timeout),
        punch(b, sid, key, False, [b.local_address], [a.local_address], timeout))
    return pa, pb, sid, secret, transcript


async def test_punch_learns_the_real_port_of_the_peer() -> None:
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        wrong = ("127.0.0.1", 9)  # discard port: nothing answers there
        pa, pb, sid, _, _ = await punched_pair(a, b, remote_for_a=[wrong])
        assert pa == b.local_address and pb == a.local_address
        puncher = a.puncher(sid)
        assert puncher is not None and puncher.learned == [b.local_address]
    finally:
        await a.close()
        await b.close()


async def test_punch_fails_fast_without_a_peer(media: MediaSocket) -> None:
    sid, secret, transcript = session_material()
    started = time.monotonic()
    with pytest.raises(PunchFailed):
        await punch(media, sid, punch_key(secret, transcript), True, [media.local_address],
                    [("127.0.0.1", 9)], timeout=0.6)
    assert 0.55 < time.monotonic() - started < 1.5
    with pytest.raises(PunchFailed):  # nothing to try: at once
        await punch(media, sid, os.urandom(32), True, [], [], timeout=5)


async def test_punch_with_the_wrong_key_fails() -> None:
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        sid = os.urandom(16)
        results = await asyncio.gather(
            punch(a, sid, os.urandom(32), True, [], [b.local_address], 0.5),
            punch(b, sid, os.urandom(32), False, [], [a.local_address], 0.5),
            return_exceptions=True)
        assert all(isinstance(r, PunchFailed) for r in results), results
    finally:
        await a.close()
        await b.close()


# ----------------------------------------------------------------------------- QUIC path


async def transfer(a: ByteStream, b: ByteStream, size: int) -> tuple[str, str, float]:
    data = os.urandom(size)
    started = time.perf_counter()

    async def send() -> None:
        await a.send(data)
        await a.close()

    async def receive() -> str:
        digest = hashlib.sha256()
        while chunk := await b.recv(65536):
            digest.update(chunk)
        await b.close()
        return digest.hexdigest()

    _, got = await asyncio.gather(send(), receive())
    return hashlib.sha256(data).hexdigest(), got, time.perf_counter() - started


async def test_punch_quic_secure_one_mebibyte() -> None:
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        t0 = time.perf_counter()
        pa, pb, sid, secret, transcript = await punched_pair(a, b)
        t1 = time.perf_counter()
        qa, qb = await asyncio.gather(quic_connect(a, pa, initiator=True),
                                      quic_connect(b, pb, initiator=False, session_id=sid))
        assert qa.path == qb.path == "udp-punch"
        sa, sb = await asyncio.gather(secure(qa, secret, transcript, True, 5),
                                      secure(qb, secret, transcript, False, 5))
        t2 = time.perf_counter()
        assert sa.path == "udp-punch"
        # 1 MiB each way at once, then 1 MiB one way and close
        (want1, got1), (want2, got2) = await asyncio.gather(one_way(sa, sb), one_way(sb, sa))
        assert got1 == want1 and got2 == want2
        t3 = time.perf_counter()
        want, got, dt = await transfer(sa, sb, MiB)
        assert got == want
        print(f"loopback: punch {1000 * (t1 - t0):.1f} ms, QUIC+secure "
              f"{1000 * (t2 - t1):.1f} ms, 1 MiB both ways at once {t3 - t2:.2f} s, "
              f"1 MiB one way + close {dt:.2f} s")
    finally:
        await a.close()
        await b.close()


async def one_way(a: ByteStream, b: ByteStream) -> tuple[str, str]:
    """1 MiB from a to b, read until b has it all (no close)."""
    data = os.urandom(MiB)

    async def receive() -> bytes:
        got = bytearray()
        while len(got) < MiB:
            got += await b.recv(65536)
        return bytes(got)

    _, got = await asyncio.gather(a.send(data), receive())
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest()


async def test_udp_path_helper_and_stream_semantics() -> None:
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        sid, secret, transcript = session_material()
        qa, qb = await asyncio.gather(
            udp_path(a, sid, secret, transcript, True, [a.local_address], [b.local_address]),
            udp_path(b, sid, secret, transcript, False, [b.local_address], [a.local_address]))
        assert isinstance(qa, QuicByteStream) and isinstance(qb, QuicByteStream)
        big = os.urandom(2 * MiB)
        reader = asyncio.create_task(qb_read(qb, len(big)))
        await qa.send(big)  # returns once no more than the high-water mark is unacknowledged
        assert qa.core.unacknowledged() <= SEND_HIGH_WATER
        assert await reader == big
        await qb.send(b"server speaks first")  # the responder may send at once
        assert await qa.recv() == b"server speaks first"
        await qa.send(b"x" * 100)
        assert await qb.recv(10) == b"x" * 10  # max_bytes respected
        await qa.close()
        assert await qb.recv() == b"x" * 90
        assert await qb.recv() == b""  # FIN
        await qb.close()
        assert not a._quic_by_cid and not b._quic_by_cid  # routes dropped
    finally:
        await a.close()
        await b.close()


async def qb_read(stream: ByteStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await stream.recv(65536)
    return bytes(got)


async def test_quic_connect_times_out_without_a_server(media: MediaSocket) -> None:
    other = await MediaSocket.open("127.0.0.1", 0)  # bound, but nobody accepts QUIC
    try:
        started = time.monotonic()
        with pytest.raises(QuicPathError):
            await quic_connect(media, other.local_address, initiator=True, timeout=0.5)

        async def serve() -> None:
            # the aborted client's Initial came early and is taken: the server opens its
            # stream at once (0.5-RTT), and the stream fails when no handshake completes
            stream = await quic_connect(other, media.local_address, initiator=False,
                                        timeout=0.5)
            await stream.recv()

        with pytest.raises(QuicPathError):
            await serve()
        assert time.monotonic() - started < 2.0
    finally:
        await other.close()


async def test_media_socket_ignores_garbage(media: MediaSocket) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    try:
        for junk in (b"", b"OVL2" + os.urandom(200), b"OVLP" + os.urandom(42),
                     os.urandom(1300), b"\xc0" + os.urandom(60)):
            transport.sendto(junk, media.local_address)
        await asyncio.sleep(0.1)
        assert media.stats["datagrams_in"] >= 4
    finally:
        transport.close()


async def test_responder_may_start_quic_after_the_initiator() -> None:
    """The initiator's Initial arrives before the responder listens: kept, then accepted."""
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        client = asyncio.create_task(quic_connect(a, b.local_address, initiator=True))
        await asyncio.sleep(0.3)
        assert b.stats["quic_early"] >= 1
        server = await quic_connect(b, a.local_address, initiator=False, timeout=2)
        qa = await client
        await qa.send(b"late but fine")
        assert await server.recv() == b"late but fine"
        await qa.close()
        await server.close()
    finally:
        await a.close()
        await b.close()


async def test_cancelled_attempts_leave_nothing_behind() -> None:
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        tasks = [asyncio.create_task(quic_connect(a, b.local_address, initiator=True)),
                 asyncio.create_task(quic_connect(a, ("127.0.0.1", 9), initiator=False)),
                 asyncio.create_task(punch(a, os.urandom(16), os.urandom(32), True, [],
                                           [("127.0.0.1", 9)]))]
        await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not a._quic_by_cid and not a._quic_by_addr and not a._acceptors
        assert not a._sessions
    finally:
        await a.close()
        await b.close()


async def test_closing_the_socket_ends_its_connections() -> None:
    a = await MediaSocket.open("127.0.0.1", 0)
    b = await MediaSocket.open("127.0.0.1", 0)
    try:
        qa, qb = await asyncio.gather(quic_connect(a, b.local_address, initiator=True),
                                      quic_connect(b, a.local_address, initiator=False))
        await a.close()
        with pytest.raises(QuicPathError):
            await qa.recv()
        with pytest.raises(QuicPathError):
            await qa.send(b"too late")
        # the peer hears the CONNECTION_CLOSE sent on abort
        with pytest.raises(QuicPathError):
            await asyncio.wait_for(qb.recv(), 2)
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------- congestion control


def simulate(loss: float, queue_cap: float | None, rate: float = 500_000, one_way: float = 0.2,
             duration: float = 30.0) -> tuple[MediaCongestionControl, float, float]:
    """The controller against a simulated path: a FIFO bottleneck of ``rate`` bytes/s with an
    optional drop-tail queue, ``one_way`` delay each way, random ``loss``. Returns the
    controller, the goodput (bytes/s) and the largest queue seen (bytes)."""
    import heapq
    import random

    from aioquic.quic.packet import QuicPacketType
    from aioquic.quic.packet_builder import QuicSentPacket
    from aioquic.tls import Epoch

    cc = MediaCongestionControl(max_datagram_size=1350)
    rng = random.Random(7)
    now = link_free = 0.0
    number = delivered = 0
    largest_queue = 0.0
    events: list[tuple[float, int, bool, QuicSentPacket]] = []
    while now < duration:
        while cc.bytes_in_flight + 1350 <= cc.congestion_window:
            packet = QuicSentPacket(epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True,
                                    is_crypto_packet=False, packet_number=number,
                                    packet_type=QuicPacketType.ONE_RTT, sent_time=now,
                                    sent_bytes=1350)
            number += 1
            cc.on_packet_sent(packet=packet)
            arrive = now + one_way
            queue = max(0.0, link_free - arrive) * rate
            largest_queue = max(largest_queue, queue)
            if (queue_cap is not None and queue > queue_cap) or rng.random() < loss:
                heapq.heappush(events, (now + 2 * one_way + 0.05, number, False, packet))
            else:
                link_free = max(link_free, arrive) + 1350 / rate
                heapq.heappush(events, (link_free + one_way, number, True, packet))
            now += 1350 / (1.5 * rate)  # the sender's own pace: 1.5x the bottleneck
        at, _, acked, packet = heapq.heappop(events)
        now = max(now, at)
        if acked:
            cc.on_rtt_measurement(now=at, rtt=at - (packet.sent_time or 0.0))
            cc.on_packet_acked(now=at, packet=packet)
            delivered += packet.sent_bytes
        else:
            cc.on_packets_lost(now=at, packets=[packet])
    return cc, delivered / now, largest_queue


@pytest.mark.parametrize("loss", [0.0, 0.04])
def test_congestion_control_fills_a_lossy_long_path_without_flooding_it(loss: float) -> None:
    bdp = 500_000 * 0.4
    for queue_cap in (None, bdp):  # an unbounded buffer, then one BDP of drop-tail
        cc, goodput, largest_queue = simulate(loss, queue_cap)
        assert goodput > 0.8 * 500_000, (loss, queue_cap, goodput)  # random loss: still fast
        assert largest_queue < 2.5 * bdp, largest_queue  # bounded queue even with no drops
        assert 1.5 * bdp < cc.congestion_window < 2.5 * bdp and cc.mode == "steady"


def test_congestion_control_backs_off_under_heavy_loss() -> None:
    cc, _, _ = simulate(0.3, 500_000 * 0.4)
    assert cc.congestion_window < 500_000 * 0.4
    cc.on_persistent_congestion()
    assert cc.congestion_window == 4 * 1350 and cc.mode == "startup"
