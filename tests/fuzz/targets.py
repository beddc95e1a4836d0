"""Every decoder that reads what a peer sends, as a fuzz target: name -> (strategy, call,
allowed exceptions). ``call`` raises only the decoder's typed error (listed in ``allowed``)
and asserts the decoder's own properties (what decodes re-encodes canonically, where the
format is canonical). Used by tests/fuzz/test_decoders.py (short, in CI) and tools/fuzz
(100k+ cases per decoder)."""

from __future__ import annotations

import contextlib
import math
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from kademlia.node import Node

from overlay.attach.connection import ClientConnection, ServerConnection
from overlay.attach.errors import AttachError, FrameError
from overlay.attach.frames import FrameDecoder, encode_frame
from overlay.attach.messages import decode, encode
from overlay.call.errors import BadFrame
from overlay.call.frames import FrameOpener, FrameSealer, call_keys
from overlay.call.stream_frames import StreamFrameDecoder, encode_stream_frame
from overlay.core import records
from overlay.core.addresses import AddressError, parse_hostport
from overlay.core.identity import node_id_for
from overlay.core.offers import signed_by, split_offer
from overlay.core.records import RecordError
from overlay.core.user_ref import BadUserRef, parse_user_ref
from overlay.dht.config import DHTConfig, DHTStats
from overlay.dht.crawling import OverlayValueCrawl, parse_nodes
from overlay.dht.envelope import (
    ANY_RECIPIENT,
    EnvelopeError,
    Flags,
    Kind,
    SessionIds,
    authenticate_mac,
    authenticate_signature,
    open_datagram,
    parse,
    seal,
    seal_session,
)
from overlay.dht.protocol import OverlayProtocol
from overlay.dht.storage import RecordStorage
from overlay.media import candidate_policy, transfer
from overlay.media.birthday import BirthdayPuncher
from overlay.media.portmap import PortMapper
from overlay.media.portmap_wire import BadPortMapMessage, decode_response
from overlay.media.punch import ACK, PROBE, Puncher, decode_probe, encode_probe
from overlay.media.selection import KEEPALIVE, MARK_BYTES, SELECT, read_selection
from overlay.media.signalling import Candidates, SignallingError, open_offer
from overlay.media.upnp_wire import (
    BadUpnpMessage,
    UpnpFault,
    find_wan_service,
    parse_http_answer,
    parse_soap_answer,
    parse_ssdp_answer,
)
from overlay.node.errors import BadSignal
from overlay.node.forwarded_signal import ForwardedSignal
from overlay.relay.admission import RelayAdmission
from overlay.relay.budget import Budget, BudgetConfig
from overlay.relay.datagram import (
    AMPLIFICATION,
    CONSENT_S,
    MAX_DATAGRAM_BYTES,
    DatagramRelay,
    encode_allocate,
)
from overlay.relay.datagram_client import RelayBinding
from overlay.relay.datagram_io import fast_path_available
from overlay.relay.protocol import (
    BadHello,
    decode_hello,
    decode_limits,
    decode_status,
    encode_hello,
    encode_status,
)
from overlay.relay.voucher import VoucherRefused, check_voucher
from tests.fuzz import seeds
from tests.fuzz.strategies import VALUES, msgpack_shaped, mutated_bytes, mutated_value, pack
from tests.helpers.netutil import udp_socket

Call = Callable[[Any], None]


@dataclass(frozen=True)
class Target:
    strategy: st.SearchStrategy[Any]
    call: Call
    #: the only exceptions ``call`` may raise
    allowed: tuple[type[BaseException], ...]

    def check(self, case: Any) -> None:
        """Run one case; an exception not in ``allowed`` propagates (a bug)."""
        try:
            self.call(case)
        except self.allowed:
            pass


# -- records ---------------------------------------------------------------------------------

def _records(wire: bytes) -> None:
    signed = records.verify(wire, now=seeds.NOW)
    assert signed.wire == wire
    record = signed.record
    times = [record.issued_at, record.expires_at, *getattr(record, "coords", ())]
    assert all(math.isfinite(t) for t in times), "a record with a non-finite time or coord"
    if signed.record.signer == seeds.ALICE.public_key:  # ed25519 is deterministic
        assert records.sign(signed.record, seeds.ALICE, now=seeds.NOW).wire == wire


# -- DHT -------------------------------------------------------------------------------------

_SESSION_KEY = b"\x07" * 32
_SESSION_IDS = SessionIds(b"\x01" * 8, b"\x02" * 8)
_SEALED = [seal(seeds.NODE, Kind.REQUEST, b"\x01" * 20, Flags.CLIENT, ["ping", []],
                recipient=ANY_RECIPIENT, now=seeds.NOW),
           seal(seeds.NODE, Kind.RESPONSE, b"\x02" * 20, Flags.NONE, {"pong": True},
                recipient=node_id_for(seeds.ALICE.public_key), now=seeds.NOW,
                ephemeral=b"\x09" * 32),
           seal_session(_SESSION_KEY, seeds.NODE.public_key, _SESSION_IDS, Kind.REQUEST,
                        b"\x03" * 20, Flags.NONE, ["find_value", [b"\x02" * 20]],
                        recipient=node_id_for(seeds.ALICE.public_key), now=seeds.NOW),
           seal_session(_SESSION_KEY, seeds.NODE.public_key, _SESSION_IDS, Kind.RESPONSE,
                        b"\x04" * 20, Flags.NONE, {"nodes": []},
                        recipient=node_id_for(seeds.ALICE.public_key), now=seeds.NOW)]


def _envelope(data: bytes) -> None:
    """Both forms: a signed datagram checked by its signature, a session one under the seed
    session key (what a node holding that session does)."""
    parsed = parse(data)
    env = (authenticate_signature(parsed) if parsed.session is None
           else authenticate_mac(parsed, _SESSION_KEY))
    assert len(env.msg_id) == 20 and len(env.sender_key) == 32
    assert (env.session is None) == (len(env.ephemeral) == 32 and parsed.session is None)


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


def _protocol() -> tuple[OverlayProtocol, _Transport]:
    node = Node(node_id_for(seeds.NODE.public_key), "127.0.0.1", 4000)
    # no id puzzle: the fuzzed stores (signed by seeds.ALICE) reach the storage path
    config = DHTConfig(requests_per_ip_per_s=1e9, request_burst_per_ip=1e9, id_puzzle_bits=0)
    protocol = OverlayProtocol(node, RecordStorage(), 20, seeds.NODE, config, DHTStats(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


_REQUESTS = [["ping", []], ["find_node", [b"\x01" * 20]], ["find_value", [b"\x02" * 20]],
             ["store", [seeds.RECORDS[3].dht_key, seeds.RECORDS[3].wire]], ["signal", []]]


def _dht_request(payload: Any) -> None:
    """A request signed by its sender, through the node's whole request path."""
    protocol, transport = _protocol()
    try:
        datagram = seal(seeds.ALICE, Kind.REQUEST, b"\x03" * 20, Flags.CLIENT, payload,
                        recipient=node_id_for(seeds.NODE.public_key))
    except EnvelopeError:
        return  # too large to send
    protocol.datagram_received(datagram, ("127.0.0.1", 5000))
    assert not protocol.stats.dropped["handler_error"], "a request raised inside the node"
    for reply in transport.sent:
        open_datagram(reply)


_RESPONSES = [{"nodes": [[b"\x01" * 20, "192.0.2.1", 4000]]},
              {"values": [r.wire for r in seeds.RECORDS],
               "nodes": [[b"\x01" * 20, "::1", 4000]]}]


class _Peer:
    source_node = Node(b"\x00" * 20, "127.0.0.1", 1)
    config = DHTConfig(id_puzzle_bits=0)  # every listed contact reaches the candidates
    stats = DHTStats()


def _dht_response(payload: Any) -> None:
    """What a node answered to find_node / find_value, as a lookup parses it."""
    if isinstance(payload, dict) and "nodes" in payload:
        parse_nodes(payload["nodes"], b"\x00" * 20)
    crawl = OverlayValueCrawl(_Peer(), Node(seeds.RECORDS[0].dht_key), [], 20, 3, 3,
                              lambda w: records.verify(w, now=seeds.NOW))
    crawl._accept(Node(b"\x05" * 20, "192.0.2.5", 4000), payload)


# -- attachment ------------------------------------------------------------------------------

def _frames(chunks: list[bytes]) -> None:
    decoder, frames = FrameDecoder(), []
    try:
        for chunk in chunks:
            frames += decoder.feed(chunk)
    finally:
        assert b"".join(chunks).startswith(b"".join(encode_frame(f) for f in frames))


def _message(body: bytes) -> None:
    assert encode(decode(body)) == body


_FRAMED = st.lists(st.one_of(
    st.builds(encode_frame, msgpack_shaped(seeds.MESSAGE_VALUES)),
    mutated_bytes([encode_frame(b) for b in seeds.MESSAGE_BODIES])), max_size=4)


def _server(chunks: list[bytes]) -> None:
    conn = ServerConnection(seeds.NODE, now=0.0)
    for i, chunk in enumerate(chunks):
        conn.receive_data(chunk, float(i))
        conn.data_to_send()


def _client(chunks: list[bytes]) -> None:
    conn = ClientConnection(seeds.ALICE, expected_node_key=seeds.NODE.public_key, now=0.0,
                            user="alice", device="phone")
    conn.send_probe(0.0)
    conn.start_handshake()
    for i, chunk in enumerate(chunks):
        conn.receive_data(chunk, float(i))
        conn.data_to_send()


# -- relay -----------------------------------------------------------------------------------

def _hello(data: bytes) -> None:
    hello = decode_hello(data)
    again = encode_hello(hello.role, hello.token, hello.requested_rate_bps, hello.voucher)
    assert again == data if hello.version == 2 else again[5:-1] == data[5:]


def _status(data: bytes) -> None:
    result = decode_status(data)
    if result is not None:
        ok, reason, used = result
        assert 2 <= used <= len(data)
        if ok:
            limits = decode_limits(data[:used])
            assert encode_status(True, limits=limits) == data[:used]
        elif data[2:used] == reason.encode():
            assert encode_status(ok, reason) == data[:used]


def _voucher(data: bytes) -> None:
    voucher = check_voucher(data, seeds.RELAY_KEY, seeds.RELAY_TOKEN, seeds.NOW)
    assert voucher.to_bytes() == data


# -- media -----------------------------------------------------------------------------------

class _Stream:
    """A ByteStream whose recv never waits: the reader coroutine runs without a loop."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def recv(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def _run(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine waited")


def _transfer(chunks: list[bytes]) -> None:
    """Frames as the sender and receiver read them; HEADER/READY/ACK payloads as maps."""
    reader = transfer.FrameReader(_Stream(chunks))  # type: ignore[arg-type]
    while True:
        try:
            kind, payload = _run(reader.next())
        except transfer.StreamClosed:
            if reader.buf:
                raise
            return  # the stream ended between frames
        assert 0 <= len(payload) < transfer.MAX_FRAME
        if kind in (transfer.HEADER, transfer.READY, transfer.ACK):
            assert isinstance(transfer.decode_control(payload, "control"), dict)


_CONTROL = [{"name": "a.txt", "size": 3, "sha256": "0" * 64, "id": "1" * 32}, {"offset": 0},
            {"ok": True, "sha256": "0" * 64}, {"error": "no"}]
_TRANSFER = st.lists(st.one_of(
    st.builds(lambda kind, body: transfer.frame(kind, body),
              st.sampled_from([transfer.HEADER, transfer.READY, transfer.ACK, transfer.DATA,
                               transfer.END, 0, 255]),
              msgpack_shaped(_CONTROL)),
    mutated_bytes([transfer.frame(transfer.HEADER, pack(_CONTROL[0])),
                   transfer.frame(transfer.DATA, b"x" * 40)])), max_size=5)

_PUNCH_KEY = b"\x44" * 32
_SESSION = b"\x05" * 16
_PROBES = [encode_probe(_PUNCH_KEY, kind, role, _SESSION, b"\x06" * 8)
           for kind in (PROBE, ACK) for role in (0, 1)]


def _punch(data: bytes) -> None:
    probe = decode_probe(_PUNCH_KEY, data)
    if probe is not None:
        assert encode_probe(_PUNCH_KEY, probe.kind, probe.role, probe.session_id,
                            probe.txid) == data
    puncher = Puncher(_SESSION, _PUNCH_KEY, [("127.0.0.1", 1)], [("127.0.0.2", 2)],
                      initiator=True, now=0.0)
    puncher.receive_datagram(data, ("127.0.0.2", 2), 0.5)
    puncher.datagrams_to_send(0.5)


def _selection(data: bytes) -> None:
    """A path's first bytes as the responder reads them (a hostile initiator's)."""
    first = read_selection(data)
    if first.state == "more":
        assert len(first.rest) < MARK_BYTES and data.endswith(first.rest)
    elif first.state == "selected":
        assert data.endswith(SELECT + first.rest)


def _birthday(data: bytes) -> None:
    """What the hard side's extra sockets hand over (any probe-sized datagram), and the easy
    side's media socket."""
    hard = BirthdayPuncher(_SESSION, _PUNCH_KEY, [("127.0.0.1", 1)],
                           [("127.0.0.2", 2), ("127.0.0.3", 3)], initiator=True, now=0.0,
                           role="hard", sockets=4)
    hard.receive_on(2, data, ("127.0.0.3", 3), 0.5)
    for index, _, _ in hard.extra_datagrams_to_send(0.5):
        assert 1 <= index <= 4
    easy = BirthdayPuncher(_SESSION, _PUNCH_KEY, [("127.0.0.1", 1)],
                           [("127.0.0.2", 2), ("127.0.0.3", 3)], initiator=True, now=0.0,
                           role="easy", probes=16)
    easy.receive_datagram(data, ("127.0.0.3", 9), 0.5)
    assert len(easy.datagrams_to_send(0.5)) <= 16 + 2 + 1


_CALL_KEYS = call_keys(b"\x31" * 32, b"\x32" * 8)


def _call_frames() -> list[bytes]:
    sealer = FrameSealer(_CALL_KEYS, b"\x32" * 8, caller=True)
    return [sealer.seal(20 * i, bytes(i * 30)) for i in range(4)]


def _call_frame(data: bytes) -> None:
    opener = FrameOpener(_CALL_KEYS, b"\x32" * 8, caller=False)
    frame = opener.open(data)
    assert len(frame.payload) == len(data) - 40 and opener.window.top == frame.seq
    try:
        opener.open(data)
    except BadFrame as exc:
        assert exc.reason == "replay"
    else:
        raise AssertionError("a frame opened twice")


def _call_stream(chunks: list[bytes]) -> None:
    decoder = StreamFrameDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            assert encode_stream_frame(frame)[2:] == frame


_CALL_STREAM = st.lists(mutated_bytes([encode_stream_frame(f) for f in _call_frames()]
                                      + [b"".join(encode_stream_frame(f)
                                                  for f in _call_frames())]), max_size=5)

_DGRAM_CFG = BudgetConfig(total_bps=10**6)
_DGRAM_SEEDS = [encode_allocate(bytes(16), encode_hello(r, seeds.RELAY_TOKEN, 48_000))
                for r in (0, 1)] + [
    encode_allocate(bytes(16), encode_hello(0, seeds.RELAY_TOKEN, 0, seeds.VOUCHER)),
    b"OVRD\x01\x03", b"\x8cC\x01\x00" + bytes(60)]


def _relay_datagram(data: bytes) -> None:
    relay = DatagramRelay(_DGRAM_CFG, Budget(_DGRAM_CFG, 0.0), RelayAdmission(_DGRAM_CFG),
                          node_key=seeds.RELAY_KEY, wall_offset=seeds.NOW)
    addr = ("198.18.0.1", 4000)
    for sent in relay.datagram_received(data, addr, 1.0):
        assert sent.addr == addr and len(sent.data) <= len(data)  # never amplifies
    # the same with the cookie this address would get
    if data[:6] == b"OVRD\x01\x00" and len(data) >= 22:
        token = data[28:60]
        again = data[:6] + relay.cookie(addr, token, 1.0) + data[22:]
        for sent in relay.datagram_received(again, addr, 1.0):
            assert sent.addr == addr and len(sent.data) <= len(again)
    relay.tick(100.0)


class _FastPathSockets:
    """The datagram relay's C fast path on real loopback sockets (made once): a relay socket,
    the two ends of one lease and a third address."""

    def __init__(self) -> None:
        from overlay.relay._forwarder import Forwarder
        self.relay, self.a, self.b, self.c = (udp_socket() for _ in range(4))
        self.to_core: list[tuple[bytes, tuple[str, int]]] = []
        self.forwarder = Forwarder(self.relay.fileno(),
                                   lambda d, addr: self.to_core.append((d, addr)),
                                   b"OVRD", MAX_DATAGRAM_BYTES, CONSENT_S, AMPLIFICATION)

    @staticmethod
    def drain(s: socket.socket) -> list[bytes]:
        out = []
        with contextlib.suppress(BlockingIOError):
            while True:
                out.append(s.recv(4096))
        return out


_FAST: list[_FastPathSockets] = []


def _relay_fast_path(case: tuple[list[tuple[int, bytes]], int, int, bool]) -> None:
    """Whatever arrives, the fast path forwards only data from a leased end, to the other end,
    within the credit and the room, and gives every other datagram to the core intact."""
    datagrams, credit, room, consented = case
    if not fast_path_available():
        return
    if not _FAST:
        _FAST.append(_FastPathSockets())
    lab = _FAST[0]
    ends = (lab.a, lab.b, lab.c)
    addr = [s.getsockname()[:2] for s in ends]
    now = time.monotonic()
    handle = lab.forwarder.put(addr[0], addr[1], now, now if consented else now - 60,
                               10**6, room, credit)
    lab.to_core.clear()
    for src, data in datagrams:
        ends[src].sendto(data, lab.relay.getsockname())
    for _ in range(len(datagrams) // 32 + 2):
        lab.forwarder.on_readable()
    at_b, at_a, at_c = lab.drain(lab.b), lab.drain(lab.a), lab.drain(lab.c)
    use = lab.forwarder.take(handle)
    assert at_c == [] and at_a == []  # (a sends nothing back here: only a and c send)
    if not consented:
        assert at_b == []
    assert sum(map(len, at_b)) == use[7] == use[4] <= max(0, min(credit, room))
    assert all(not d.startswith(b"OVRD") and len(d) <= MAX_DATAGRAM_BYTES for d in at_b)
    sent = sorted((d[:2048], src) for src, d in datagrams)  # (read into 2 KiB buffers)
    got = sorted([(d, 0) for d in at_b]
                 + [(d, 0 if a == tuple(addr[0]) else 2) for d, a in lab.to_core])
    assert got == sent  # nothing lost, nothing made up, every source named right


_FAST_PATH_CASE = st.tuples(
    st.lists(st.tuples(st.sampled_from([0, 2]),
                       mutated_bytes([*_DGRAM_SEEDS, b"voice" * 32])
                       | st.binary(min_size=1390, max_size=2100)), max_size=40),
    st.integers(0, 3000), st.integers(-100, 3000), st.booleans())


_RELAY_ADDR = ("198.18.0.9", 4001)
_BINDING_SEEDS = [b"OVRD\x01\x01" + bytes(16), b"OVRD\x01\x02\x00\x00",
                  b"OVRD\x01\x02" + encode_status(True, limits=seeds.LIMITS),
                  b"OVRD\x01\x02" + encode_status(False, "budget"),
                  b"OVRD\x01\x02" + encode_status(False, "unknown token")]


def _relay_binding(data: bytes) -> None:
    """What the relay's address may send a binding end (or anyone spoofing it)."""
    binding = RelayBinding(_RELAY_ADDR, encode_hello(1, seeds.RELAY_TOKEN, 0), 0.0)
    for now in (0.0, 0.1):
        for out in binding.datagram_received(data, _RELAY_ADDR, now):
            assert out[:6] == b"OVRD\x01\x00" and len(out) < 200  # only ever an ALLOCATE
    assert binding.state in ("binding", "bound", "refused")
    assert (binding.limits is not None) == (binding.state == "bound")
    binding.timer(100.0)  # past the deadline: bound stays bound, binding gives up
    assert binding.state in ("bound", "refused")


_GW = ("198.19.7.1", 5351)
_PM_NONCE = b"\x07" * 12
_PORTMAP_ANSWERS = [
    # PCP MAP success, NAT-PMP map and external-address answers, a short NAT-PMP error
    bytes.fromhex("0281000000000258000000070000000000000000000000000000000000000000")[:24]
    + _PM_NONCE + bytes([6, 0, 0, 0]) + (5000).to_bytes(2, "big") + (40000).to_bytes(2, "big")
    + bytes(10) + b"\xff\xff" + bytes([198, 18, 0, 17]),
    bytes([0, 130, 0, 0, 0, 0, 0, 7]) + bytes.fromhex("13889c4000000258"),
    bytes([0, 128, 0, 0, 0, 0, 0, 7, 198, 18, 0, 17]),
    bytes([0, 129, 0, 1, 0, 0, 0, 9]),
]


def _portmap(data: bytes) -> None:
    """What the gateway (or anyone on the LAN spoofing it) sends: decoded strictly, and fed
    to a mapper that is asking by PCP, by NAT-PMP, renewing, and deleting."""
    for step in range(4):
        mapper = PortMapper(_GW[0], "198.19.7.2", "tcp", 5000, _PM_NONCE)
        mapper.start(0.0)
        if step == 1:
            mapper.receive_datagram(_PORTMAP_ANSWERS[3], _GW, 0.01)  # NAT-PMP only
        if step >= 2:
            mapper.receive_datagram(_PORTMAP_ANSWERS[0], _GW, 0.01)
            mapper.handle_timer(400.0)
        if step == 3:
            mapper.close(401.0)
        mapper.receive_datagram(data, _GW, 401.5)
        mapper.handle_timer(402.0)
        mapper.datagrams_to_send(402.0)
        assert mapper.mapping is None or mapper.mapping.lifetime > 0
    decode_response(data)


_UPNP_ANSWERS = [
    b"HTTP/1.1 200 OK\r\nST: ssdp:all\r\nLOCATION: http://198.19.7.1:5000/rootDesc.xml\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n<root><device><serviceList><service>"
    b"<serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>"
    b"/ctl/IPConn</controlURL></service></serviceList></device></root>",
    b'HTTP/1.1 200 OK\r\n\r\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<s:Body><u:AddPortMappingResponse xmlns:u="x"/></s:Body></s:Envelope>',
    b'HTTP/1.1 500 Internal Server Error\r\n\r\n<s:Envelope xmlns:s="s"><s:Body><s:Fault>'
    b"<detail><UPnPError><errorCode>718</errorCode></UPnPError></detail></s:Fault></s:Body>"
    b"</s:Envelope>",
]


def _upnp(data: bytes) -> None:
    """What the gateway answers over SSDP and HTTP (or anyone on the LAN spoofing it):
    the SSDP answer, the description and the SOAP answer parsers, all strict."""
    with contextlib.suppress(BadUpnpMessage):
        answer = parse_ssdp_answer(data)
        assert answer.path.startswith("/") and 0 < answer.port < 65536
    with contextlib.suppress(BadUpnpMessage):
        service = find_wan_service(data)
        assert service.control_path.startswith("/")
    http = parse_http_answer(data)
    with contextlib.suppress(BadUpnpMessage):
        find_wan_service(http.body)
    parse_soap_answer(http, "AddPortMapping")


def _offer(wire: bytes) -> None:
    signed_by(wire, seeds.ALICE.public_key)
    parts = split_offer(wire)
    offer = open_offer(wire, now=seeds.NOW)
    assert parts is not None and offer.wire == wire
    assert math.isfinite(offer.issued_at), "an offer fresh at any time"
    assert Candidates.from_wire(offer.candidates.to_wire()) == offer.candidates
    assert len(offer.path_salt) in (0, 16) and (offer.kind == "invite" or not offer.path_salt)
    assert not offer.bitrate_bps or (offer.purpose == "call" and offer.kind == "invite")


def _signal(args: Any) -> None:
    if not isinstance(args, list):
        return
    signal = ForwardedSignal.from_args(args)
    assert signal.to_args() == args


def _user_ref(text: str) -> None:
    ref = parse_user_ref(text)
    assert parse_user_ref(str(ref)) == ref
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}(#[0-9a-f]{8,64})?", str(ref)), str(ref)


def _candidates(value: Any) -> None:
    cands = Candidates.from_wire(value)
    assert Candidates.from_wire(cands.to_wire()) == cands
    for addrs in (cands.tcp, cands.udp):
        candidate_policy.select(addrs, ["203.0.113.1"], ["198.51.100.2"])


def _hostport(text: str) -> None:
    _host, port = parse_hostport(text)
    assert 0 <= port < 65536


_MAPPED = (("198.18.0.5", 40000),)
_CANDS = [seeds.CANDIDATES.to_wire(), Candidates().to_wire(),
          Candidates(_MAPPED, _MAPPED, "cone", False, _MAPPED, _MAPPED).to_wire()]

TARGETS: dict[str, Target] = {
    "records": Target(msgpack_shaped(seeds.RECORD_BODIES, seeds.resign_record)
                      | st.builds(seeds.resign_record, VALUES), _records, (RecordError,)),
    "dht_envelope": Target(mutated_bytes(_SEALED), _envelope, (EnvelopeError,)),
    "dht_request": Target(mutated_value(_REQUESTS) | VALUES, _dht_request, ()),
    "dht_response": Target(mutated_value(_RESPONSES) | VALUES, _dht_response, ()),
    "attach_frames": Target(_FRAMED, _frames, (FrameError,)),
    "attach_messages": Target(msgpack_shaped(seeds.MESSAGE_VALUES), _message, (AttachError,)),
    "attach_server": Target(_FRAMED, _server, ()),
    "attach_client": Target(_FRAMED, _client, ()),
    "relay_hello": Target(mutated_bytes([encode_hello(r, b"\x01" * 32, 10**6)
                                         for r in (0, 1)]
                                        + [encode_hello(0, seeds.RELAY_TOKEN, 0, seeds.VOUCHER),
                                           b"OVRL\x01\x00" + bytes(40)]), _hello, (BadHello,)),
    "relay_status": Target(mutated_bytes([encode_status(True), encode_status(False, "budget"),
                                          encode_status(True, limits=seeds.LIMITS)]),
                           _status, (ValueError,)),
    "relay_voucher": Target(mutated_bytes([seeds.VOUCHER]), _voucher, (VoucherRefused,)),
    "transfer_frames": Target(_TRANSFER, _transfer, (transfer.TransferError,)),
    "call_frames": Target(mutated_bytes(_call_frames()), _call_frame, (BadFrame,)),
    "call_stream_frames": Target(_CALL_STREAM, _call_stream, (BadFrame,)),
    "relay_datagram": Target(mutated_bytes(_DGRAM_SEEDS), _relay_datagram, ()),
    "relay_binding": Target(mutated_bytes(_BINDING_SEEDS), _relay_binding, ()),
    "relay_fast_path": Target(_FAST_PATH_CASE, _relay_fast_path, ()),
    "punch_probes": Target(mutated_bytes(_PROBES), _punch, ()),
    "birthday_probes": Target(mutated_bytes(_PROBES), _birthday, ()),
    "path_selection": Target(mutated_bytes([SELECT, KEEPALIVE * 2 + SELECT + b"frame",
                                            KEEPALIVE + SELECT[:3]]), _selection, ()),
    "portmap_answers": Target(mutated_bytes(_PORTMAP_ANSWERS), _portmap, (BadPortMapMessage,)),
    "upnp_answers": Target(mutated_bytes(_UPNP_ANSWERS), _upnp, (BadUpnpMessage, UpnpFault)),
    "offers": Target(msgpack_shaped(seeds.OFFER_BODIES, seeds.resign_offer)
                     | mutated_bytes([o.wire for o in seeds.OFFERS]), _offer,
                     (SignallingError,)),
    "forwarded_signal": Target(mutated_value(seeds.SIGNAL_ARGS), _signal, (BadSignal,)),
    "user_ref": Target(st.text(max_size=80) | st.sampled_from(seeds.USER_REFS)
                       | st.builds(lambda a, b: a + "#" + b, st.text(max_size=20),
                                   st.text("0123456789abcdefABCDEF", max_size=70)),
                       _user_ref, (BadUserRef,)),
    "candidates": Target(mutated_value(_CANDS) | VALUES, _candidates, (SignallingError,)),
    "hostport": Target(st.text(max_size=60) | st.sampled_from(
        ["127.0.0.1:4000", "[::1]:4000", "host:0", ":1", "[::1]", "a:b:c"]),
        _hostport, (AddressError,)),
}

#: inputs that once raised something else: each stays a regression example
REGRESSIONS: dict[str, list[Any]] = {
    # NaN passed every lifetime, skew and expiry comparison: records that never expire
    "records": [seeds.resign_record([*seeds.RECORD_BODIES[3][:5], math.nan, math.nan]),
                seeds.resign_record([*seeds.RECORD_BODIES[0][:-2], math.nan, math.nan])],
    # str.isdigit accepts "²", int() refuses it: a bare ValueError, not AddressError
    "hostport": ["\x0e4j\xce\xf1:\xb2", "127.0.0.1:\u0663"],
    # patterns ending in $ also matched before a final newline
    "user_ref": ["alice\n", "alice#0123abcd\n"],
    # an invite issued at NaN was fresh at any time
    "offers": [seeds.resign_offer([*seeds.OFFER_BODIES[0][:8], math.nan,
                                   *seeds.OFFER_BODIES[0][9:]])],
}
