"""Tests for the attachment wire protocol (overlay.attach): real crypto, no mocks, no I/O."""

from __future__ import annotations

import dataclasses
import random
import tracemalloc
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from overlay.attach import (
    CHANNEL_AAD,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Alternative,
    Attach,
    AttachOk,
    AttachRejected,
    BadHandshakeSignature,
    ClientAuth,
    ClientConnection,
    ClientHandshake,
    ClientHello,
    ConnectionState,
    DecryptError,
    Detach,
    DirectoryRequest,
    DirectoryResponse,
    Error,
    ErrorCode,
    Event,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    Goodbye,
    HandshakeComplete,
    HandshakeError,
    HandshakeResult,
    HandshakeState,
    HandshakeTimeout,
    HeartbeatDue,
    HelloFlags,
    InvalidState,
    LookupRequest,
    LookupResponse,
    MalformedHandshake,
    MalformedMessage,
    Message,
    MessageReceived,
    MessageType,
    Moving,
    PeerClosed,
    PeerDead,
    Ping,
    Pong,
    PongReceived,
    Probe,
    ProbeAnswered,
    ProbeReply,
    ProtocolViolation,
    ReachabilityRequest,
    ReachabilityResult,
    Refused,
    RefuseReason,
    RelayReserve,
    RelayReserved,
    Role,
    SecureChannel,
    ServerConnection,
    ServerHandshake,
    ServerHello,
    SessionConfig,
    Signal,
    SignalDelivery,
    SignalResult,
    UnexpectedHandshakeMessage,
    UnexpectedMessage,
    UnexpectedNodeKey,
    UnknownMessageType,
    UnsupportedVersion,
    WeakKey,
    decode,
    encode,
    encode_frame,
    verify_attach,
    verify_attach_claim,
    verify_lookup_response,
)
from overlay.core import records
from overlay.core.identity import Identity

NOW = 1_700_000_000.0
NODE = Identity.from_seed(bytes([1]) * 32)
ALICE = Identity.from_seed(bytes([2]) * 32)
BOB = Identity.from_seed(bytes([3]) * 32)
MALLORY = Identity.from_seed(bytes([4]) * 32)
OTHER_NODE = Identity.from_seed(bytes([5]) * 32)
K32 = bytes(range(32))
N16 = bytes(range(16))
SIG = bytes(64)


@dataclass(frozen=True)
class Impostor(Identity):
    """Claims someone else's public key but can only sign with its own secret key."""

    claimed: bytes = b""

    @property
    def public_key(self) -> bytes:
        return self.claimed


def pack(values: Any, **kwargs: Any) -> bytes:
    body: bytes = msgpack.packb(values, use_bin_type=True, **kwargs)
    return body


def frames_of(data: bytes) -> list[bytes]:
    return FrameDecoder().feed(data)


def exchange(
    client: ClientConnection, server: ServerConnection, now: float = 0.0
) -> tuple[list[Event], list[Event]]:
    """Shuttle bytes both ways until neither side has anything to say."""
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(50):
        c_out = client.data_to_send()
        if c_out:
            server_events += server.receive_data(c_out, now)
        s_out = server.data_to_send()
        if s_out:
            client_events += client.receive_data(s_out, now)
        if not c_out and not s_out:
            return client_events, server_events
    raise AssertionError("connections never went quiet")


def connect(
    *,
    client_identity: Identity = ALICE,
    user: str = "alice",
    device: str = "phone",
    lookup_only: bool = False,
    expected: bytes | None = NODE.public_key,
    config: SessionConfig | None = None,
    now: float = 0.0,
) -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(
        client_identity, expected_node_key=expected, user=user, device=device,
        lookup_only=lookup_only, now=now, config=config,
    )
    server = ServerConnection(NODE, now=now, config=config)
    se = server.receive_data(client.start_handshake(), now)
    ce, more = exchange(client, server, now)
    assert [type(e) for e in ce] == [HandshakeComplete]
    assert [type(e) for e in se + more] == [HandshakeComplete]
    return client, server


def only_messages(events: list[Event]) -> list[Message]:
    assert all(isinstance(e, MessageReceived) for e in events), events
    return [e.message for e in events if isinstance(e, MessageReceived)]


def presence_wire(
    identity: Identity = ALICE, user: str = "alice", device: str = "phone",
    node: Identity = NODE,
) -> bytes:
    return records.presence(
        identity, user, device, seq=1, supernode_key=node.public_key,
        supernode_host="192.0.2.1", supernode_port=4000, now=NOW,
    ).wire


# --- frames -------------------------------------------------------------------------


def test_frames_round_trip_in_any_chunking() -> None:
    bodies = [b"", b"a", bytes(range(256)) * 10, b"x" * MAX_FRAME_BYTES]
    stream = b"".join(encode_frame(b) for b in bodies)
    assert FrameDecoder().feed(stream) == bodies
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
        assert decoder.buffered <= 4 + MAX_FRAME_BYTES
    assert out == bodies
    rng = random.Random(7)
    decoder, out, pos = FrameDecoder(), [], 0
    while pos < len(stream):
        step = rng.randint(1, 5000)
        out += decoder.feed(stream[pos : pos + step])
        pos += step
    assert out == bodies and decoder.buffered == 0


def test_oversize_length_prefix_is_refused_before_buffering() -> None:
    decoder = FrameDecoder()
    prefix = (1 << 30).to_bytes(4, "big")  # announces a 1 GiB frame
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge) as info:
            decoder.feed(prefix)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert decoder.buffered == 0
    assert info.value.length == 1 << 30 and info.value.limit == MAX_FRAME_BYTES
    with pytest.raises(FrameError):  # the stream position is lost for good
        decoder.feed(b"\x00\x00\x00\x01x")


def test_frame_cap_is_configurable_and_enforced_on_both_ends() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    assert decoder.feed(encode_frame(b"y" * 100, 100)) == [b"y" * 100]
    with pytest.raises(FrameTooLarge):
        decoder.feed((101).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        encode_frame(b"y" * 101, 100)
    with pytest.raises(FrameTooLarge):
        encode_frame(b"y" * (MAX_FRAME_BYTES + 1))


def test_frames_before_an_oversize_prefix_are_handed_over() -> None:
    data = encode_frame(b"one") + encode_frame(b"two") + b"\xff\xff\xff\xff"
    with pytest.raises(FrameTooLarge) as info:
        FrameDecoder().feed(data)
    assert info.value.complete_frames == [b"one", b"two"]


# --- messages -----------------------------------------------------------------------

ALTS = (Alternative("192.0.2.7", 4000, K32), Alternative("2001:db8::1", 4001))
SAMPLES: list[Message] = [
    Probe(N16, 12.5),
    ProbeReply(N16, 12.5, 1, True, 250),
    ClientHello(1, K32, K32, "alice", "phone", N16, 0),
    ClientHello(1, K32, K32, "", "", N16, int(HelloFlags.LOOKUP_ONLY)),
    ServerHello(1, K32, K32, N16, SIG),
    ClientAuth(SIG),
    Error(int(ErrorCode.MALFORMED), "bad message"),
    Attach(b"\x01" * 200),
    Attach(b"\x01" * 200, b"\x02" * 100),
    AttachOk("198.51.100.9", 53211, 30),
    Refused(int(RefuseReason.FULL), "full, go elsewhere", ALTS),
    Refused(7, "", ()),
    Moving("shutting down", ALTS),
    Goodbye("bye"),
    Ping(2**64 - 1, -1.0),
    Pong(0, 0.0),
    LookupRequest(9, "bob"),
    LookupResponse(9, (b"r1", b"r" * 1024)),
    LookupResponse(10, ()),
    Signal(11, "bob", "", b"\x00offer"),
    Signal(12, "bob", "laptop", b""),
    SignalDelivery("alice", "phone", K32, b"x" * 16384),
    SignalResult(11, False, "no such user"),
    DirectoryRequest(13),
    DirectoryResponse(13, (b"s1",)),
    Detach(b"\x02" * 100),
    ReachabilityRequest(14, 4000),
    ReachabilityResult(14, "198.51.100.9", True, False),
    RelayReserve(15, b"\x07" * 32),
    RelayReserved(15, True, "", 60.0),
    RelayReserved(16, False, "key limit", 0.0),
]


def test_every_message_type_round_trips() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    for msg in SAMPLES:
        body = encode(msg)
        again = decode(body)
        assert again == msg and type(again) is type(msg)
        assert encode(again) == body
        assert msgpack.unpackb(body)[0] == msg.TAG


def test_message_tags_are_stable() -> None:
    assert {t.name: t.value for t in MessageType} == {
        "PROBE": 1, "PROBE_REPLY": 2, "CLIENT_HELLO": 3, "SERVER_HELLO": 4,
        "CLIENT_AUTH": 5, "ERROR": 6, "ATTACH": 16, "ATTACH_OK": 17, "REFUSED": 18,
        "MOVING": 19, "GOODBYE": 20, "PING": 21, "PONG": 22, "LOOKUP_REQUEST": 32,
        "LOOKUP_RESPONSE": 33, "SIGNAL": 48, "SIGNAL_DELIVERY": 49, "SIGNAL_RESULT": 50,
        "DETACH": 23, "DIRECTORY_REQUEST": 34, "DIRECTORY_RESPONSE": 35,
        "REACHABILITY_REQUEST": 36, "REACHABILITY_RESULT": 37, "RELAY_RESERVE": 52,
        "RELAY_RESERVED": 53,
    }


HELLO = [3, 1, K32, K32, "alice", "phone", N16, 0]
NON_CANONICAL_PING = b"\x93\x15\xcd\x00\x05" + pack(1.0)  # seq 5 as uint16
BAD_BODIES: dict[str, bytes] = {
    "bool for int": pack([21, True, 1.0]),
    "int for float": pack([21, 1, 1]),
    "bool for int tag": pack([True, 1.0]),
    "nan float": pack([21, 1, float("nan")]),
    "negative u64": pack([21, -1, 1.0]),
    "signature 63 bytes": pack([5, bytes(63)]),
    "str for bytes": pack([5, "x" * 64]),
    "bytes for str": pack([20, b"bye"]),
    "extra field": pack([20, "bye", 1]),
    "missing field": pack([21, 1]),
    "unknown tag": pack([99, 1]),
    "empty array": pack([]),
    "not an array": pack(5),
    "map body": pack({1: 2}),
    "map field": pack([20, {}]),
    "trailing bytes": pack([20, "bye"]) + b"\x00",
    "truncated": pack([20, "bye"])[:-1],
    "non-canonical int": NON_CANONICAL_PING,
    "float32": pack([21, 1, 1.5], use_single_float=True),
    "invalid utf-8": b"\x92\x14\xa1\xff",
    "ext type": pack([20, msgpack.ExtType(1, b"x")]),
    "huge array header": b"\xdd\xff\xff\xff\xff",
    "uppercase user": pack([32, 1, "Alice"]),
    "long user": pack([32, 1, "a" * 65]),
    "empty lookup user": pack([32, 1, ""]),
    "unknown hello flag": pack([*HELLO[:-1], 2]),
    "empty user without lookup-only": pack([3, 1, K32, K32, "", "phone", N16, 0]),
    "short ephemeral key": pack([3, 1, K32[:31], K32, "alice", "phone", N16, 0]),
    "long nonce": pack([3, 1, K32, K32, "alice", "phone", N16 + b"x", 0]),
    "control char in text": pack([20, "bye\x00"]),
    "newline in text": pack([6, 1, "two\nlines"]),
    "text too long": pack([20, "x" * 257]),
    "host not an ip": pack([17, "example.com", 1, 30]),
    "port zero": pack([17, "192.0.2.1", 0, 30]),
    "port too big": pack([17, "192.0.2.1", 65536, 30]),
    "heartbeat zero": pack([17, "192.0.2.1", 1, 0]),
    "alternative without key": pack([18, 1, "full", [["192.0.2.7", 4000]]]),
    "alternative short key": pack([18, 1, "full", [["192.0.2.7", 4000, b"k"]]]),
    "too many alternatives": pack([19, "bye", [["192.0.2.7", 4000, b""]] * 17]),
    "too many records": pack([33, 1, [b"r"] * 33]),
    "record too large": pack([33, 1, [b"r" * 1025]]),
    "empty record": pack([33, 1, [b""]]),
    "records not a list": pack([33, 1, b"r"]),
    "empty attach": pack([16, b""]),
    "signal payload too large": pack([48, 1, "bob", "", b"x" * 16385]),
    "load above 1000": pack([2, N16, 1.0, 1, True, 1001]),
    "int for bool": pack([2, N16, 1.0, 1, 1, 10]),
    "body above frame cap": pack([20, "x"]) + b"\x00" * MAX_FRAME_BYTES,
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_strict_schema_rejects(name: str) -> None:
    with pytest.raises(MalformedMessage):
        decode(BAD_BODIES[name])


def test_unknown_tag_has_its_own_error_and_valid_twins_pass() -> None:
    with pytest.raises(UnknownMessageType):
        decode(pack([7]))
    # the well-formed versions of a few of the bad bodies do decode
    assert decode(pack([21, 5, 1.0])) == Ping(5, 1.0)
    assert decode(pack(HELLO)) == ClientHello(1, K32, K32, "alice", "phone", N16, 0)
    assert decode(pack([2, N16, 1.0, 1, True, 1000])) == ProbeReply(N16, 1.0, 1, True, 1000)


def test_invalid_messages_cannot_be_constructed() -> None:
    with pytest.raises(MalformedMessage):
        Ping(True, 1.0)
    with pytest.raises(MalformedMessage):
        ClientAuth(bytes(63))
    with pytest.raises(MalformedMessage):
        LookupRequest(1, "Not A Name")
    with pytest.raises(TypeError):
        encode("not a message")  # type: ignore[arg-type]
    # lists are accepted for convenience and stored as tuples (messages are hashable)
    msg = LookupResponse(1, [b"a"])  # type: ignore[arg-type]
    assert msg.records == (b"a",) and hash(msg)


def test_decode_of_mutated_bodies_only_raises_malformed() -> None:
    rng = random.Random(1234)
    bodies = [encode(m) for m in SAMPLES]
    for _ in range(3000):
        body = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            if op == 0 and body:
                body[rng.randrange(len(body))] = rng.randrange(256)
            elif op == 1 and body:
                del body[rng.randrange(len(body)) :]
            else:
                body.insert(rng.randrange(len(body) + 1), rng.randrange(256))
        try:
            decode(bytes(body))
        except MalformedMessage:
            pass


# --- handshake ----------------------------------------------------------------------


def run_handshake(
    client: ClientHandshake, server: ServerHandshake
) -> tuple[bytes, bytes, bytes]:
    hello = client.start()
    server_hello = server.receive(hello)
    assert server_hello is not None
    auth = client.receive(server_hello)
    assert server.receive(auth) is None
    return hello, server_hello, auth


def test_full_handshake_agrees_on_keys_and_identities() -> None:
    client = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    server = ServerHandshake(NODE)
    run_handshake(client, server)
    assert client.state is server.state is HandshakeState.COMPLETE
    c, s = client.result, server.result
    assert c is not None and s is not None
    assert c.role is Role.CLIENT and s.role is Role.SERVER
    assert c.send_key == s.recv_key and c.recv_key == s.send_key
    assert c.send_key != c.recv_key
    assert c.session_id == s.session_id
    assert s.peer_key == ALICE.public_key and s.user == "alice" and s.device == "phone"
    assert c.peer_key == NODE.public_key and c.peer_node_id == NODE.node_id
    assert c.version == s.version == PROTOCOL_VERSION
    assert not c.first_contact and not s.lookup_only
    # every handshake gets fresh keys
    again = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                            device="phone")
    run_handshake(again, ServerHandshake(NODE))
    assert again.result is not None and again.result.send_key != c.send_key


def test_first_contact_trusts_on_first_use() -> None:
    client = ClientHandshake(BOB, expected_node_key=None, user="bob", device="pc")
    run_handshake(client, ServerHandshake(OTHER_NODE))
    assert client.result is not None
    assert client.result.first_contact and client.result.node_key == OTHER_NODE.public_key


def test_wrong_node_key_is_refused() -> None:
    client = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    server_hello = ServerHandshake(OTHER_NODE).receive(client.start())
    assert server_hello is not None
    with pytest.raises(UnexpectedNodeKey):
        client.receive(server_hello)
    assert client.state is HandshakeState.FAILED and client.result is None
    with pytest.raises(HandshakeError):
        client.receive(server_hello)


def test_node_key_swapped_in_by_a_middleman_fails_the_signature() -> None:
    client = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    server_hello = ServerHandshake(OTHER_NODE).receive(client.start())
    assert server_hello is not None
    genuine = decode(server_hello)
    assert isinstance(genuine, ServerHello)
    forged = dataclasses.replace(genuine, server_node_pk=NODE.public_key)
    with pytest.raises(BadHandshakeSignature):
        client.receive(encode(forged))


def test_server_verifies_the_client_identity_proof() -> None:
    # Mallory claims Alice's identity key but can only sign with her own.
    impostor = Impostor(MALLORY.signing_key, claimed=ALICE.public_key)
    client = ClientHandshake(impostor, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    server = ServerHandshake(NODE)
    server_hello = server.receive(client.start())
    assert server_hello is not None
    auth = client.receive(server_hello)  # the client side cannot tell it is lying
    with pytest.raises(BadHandshakeSignature):
        server.receive(auth)
    assert server.state is HandshakeState.FAILED and server.result is None
    # a genuine signature with one bit flipped fails too
    honest = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    server = ServerHandshake(NODE)
    server_hello = server.receive(honest.start())
    assert server_hello is not None
    sig = bytearray(decode(honest.receive(server_hello)).signature)  # type: ignore[attr-defined]
    sig[0] ^= 1
    with pytest.raises(BadHandshakeSignature):
        server.receive(encode(ClientAuth(bytes(sig))))


def test_replayed_client_handshake_is_refused() -> None:
    client = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    hello, _, auth = run_handshake(client, ServerHandshake(NODE))
    replay = ServerHandshake(NODE)  # fresh ephemeral key and nonce
    assert replay.receive(hello) is not None
    with pytest.raises(BadHandshakeSignature):
        replay.receive(auth)
    assert replay.result is None


def test_replayed_server_hello_is_refused() -> None:
    first = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                            device="phone")
    _, server_hello, _ = run_handshake(first, ServerHandshake(NODE))
    second = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    second.start()
    with pytest.raises(BadHandshakeSignature):
        second.receive(server_hello)


def test_tampered_client_hello_is_detected_by_the_client() -> None:
    # A middleman strips LOOKUP_ONLY / changes the device: the server signs what it got,
    # which is not what the client sent.
    client = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone", flags=HelloFlags.LOOKUP_ONLY)
    hello = decode(client.start())
    assert isinstance(hello, ClientHello)
    tampered = dataclasses.replace(hello, flags=0, device="laptop")
    server_hello = ServerHandshake(NODE).receive(encode(tampered))
    assert server_hello is not None
    with pytest.raises(BadHandshakeSignature):
        client.receive(server_hello)


def test_version_negotiation() -> None:
    newer = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                            device="phone", version=PROTOCOL_VERSION + 3)
    run_handshake(newer, ServerHandshake(NODE))
    assert newer.result is not None and newer.result.version == PROTOCOL_VERSION
    ancient = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                              device="phone", version=0)
    with pytest.raises(UnsupportedVersion):
        ServerHandshake(NODE).receive(ancient.start())
    future_only = ServerHandshake(NODE, min_version=2, max_version=2)
    current = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                              device="phone")
    with pytest.raises(UnsupportedVersion):
        future_only.receive(current.start())


def test_handshake_deviations_fail_the_state_machine() -> None:
    server = ServerHandshake(NODE)
    with pytest.raises(UnexpectedHandshakeMessage):
        server.receive(encode(ClientAuth(SIG)))
    assert server.state is HandshakeState.FAILED
    with pytest.raises(HandshakeError):
        server.receive(b"anything")
    with pytest.raises(MalformedHandshake):
        ServerHandshake(NODE).receive(b"\xc1garbage")
    client = ClientHandshake(ALICE, expected_node_key=None, user="alice", device="phone")
    with pytest.raises(UnexpectedHandshakeMessage):  # nothing sent yet
        client.receive(encode(ServerHello(1, K32, K32, N16, SIG)))
    client = ClientHandshake(ALICE, expected_node_key=None, user="alice", device="phone")
    client.start()
    with pytest.raises(HandshakeError):
        client.start()


def test_degenerate_ephemeral_key_is_refused() -> None:
    hello = ClientHello(1, bytes(32), ALICE.public_key, "alice", "phone", N16, 0)
    server = ServerHandshake(NODE)
    with pytest.raises(WeakKey):
        server.receive(encode(hello))
    assert server.state is HandshakeState.FAILED


# --- secure channel -----------------------------------------------------------------


def handshake_results() -> tuple[HandshakeResult, HandshakeResult]:
    client = ClientHandshake(ALICE, expected_node_key=NODE.public_key, user="alice",
                             device="phone")
    server = ServerHandshake(NODE)
    run_handshake(client, server)
    assert client.result is not None and server.result is not None
    return client.result, server.result


def channel_pair() -> tuple[SecureChannel, SecureChannel]:
    client, server = handshake_results()
    return SecureChannel.from_handshake(client), SecureChannel.from_handshake(server)


def body_of(frame: bytes) -> bytes:
    (body,) = frames_of(frame)
    return body


def test_channel_carries_messages_both_ways() -> None:
    client, server = channel_pair()
    for i in range(5):
        msg = LookupRequest(i, "bob")
        frame = client.seal(msg)
        assert b"bob" not in frame
        assert server.open(body_of(frame)) == msg
        reply = LookupResponse(i, (b"rec",))
        assert client.open(body_of(server.seal(reply))) == reply
    assert client.sent == server.received == 5


def test_tampered_frames_are_refused_and_poison_the_channel() -> None:
    client, server = channel_pair()
    body = body_of(client.seal(Goodbye("bye")))
    tampered = bytearray(body)
    tampered[len(body) // 2] ^= 0x40
    with pytest.raises(DecryptError):
        server.open(bytes(tampered))
    assert server.failed
    with pytest.raises(DecryptError):  # even the genuine frame is refused afterwards
        server.open(body)


@pytest.mark.parametrize("position", [0, 7, -17, -1])
def test_any_flipped_bit_is_detected(position: int) -> None:
    client, server = channel_pair()
    body = bytearray(body_of(client.seal(Signal(1, "bob", "", b"offer"))))
    body[position] ^= 1
    with pytest.raises(DecryptError):
        server.open(bytes(body))


def test_replayed_reordered_truncated_and_reflected_frames_are_refused() -> None:
    client, server = channel_pair()
    first = body_of(client.seal(Ping(1, 1.0)))
    second = body_of(client.seal(Ping(2, 2.0)))
    assert server.open(first) == Ping(1, 1.0)
    with pytest.raises(DecryptError):  # replay
        server.open(first)

    client, server = channel_pair()
    first = body_of(client.seal(Ping(1, 1.0)))
    second = body_of(client.seal(Ping(2, 2.0)))
    with pytest.raises(DecryptError):  # reordered
        server.open(second)

    client, server = channel_pair()
    first = body_of(client.seal(Ping(1, 1.0)))
    with pytest.raises(DecryptError):  # truncated
        server.open(first[:-1])
    client, server = channel_pair()
    with pytest.raises(DecryptError):  # shorter than a tag
        server.open(b"short")

    client, server = channel_pair()
    with pytest.raises(DecryptError):  # reflected back at its sender
        client.open(body_of(client.seal(Ping(1, 1.0))))


def test_handshake_messages_are_not_allowed_in_the_channel() -> None:
    client, _ = channel_pair()
    with pytest.raises(ValueError):
        client.seal(ClientAuth(SIG))
    # A peer holding the key still cannot smuggle one in.
    client_result, server_result = handshake_results()
    body = crypto_aead_chacha20poly1305_ietf_encrypt(
        encode(ClientAuth(SIG)), CHANNEL_AAD, bytes(12), client_result.send_key
    )
    with pytest.raises(UnexpectedMessage):
        SecureChannel.from_handshake(server_result).open(body)


def test_seal_refuses_oversize_without_burning_a_nonce() -> None:
    client_result, server_result = handshake_results()
    small = SecureChannel.from_handshake(client_result, max_frame_bytes=100)
    with pytest.raises(FrameTooLarge):
        small.seal(Signal(1, "bob", "", b"x" * 200))
    assert small.sent == 0
    server = SecureChannel.from_handshake(server_result)
    assert server.open(body_of(small.seal(Goodbye("ok")))) == Goodbye("ok")


# --- sessions -----------------------------------------------------------------------


def test_full_session_probe_attach_lookup_signal_goodbye() -> None:
    client = ClientConnection(ALICE, expected_node_key=NODE.public_key, user="alice",
                              device="phone", now=0.0)
    server = ServerConnection(NODE, now=0.0, load_permille=420)
    server.receive_data(client.send_probe(0.0) + client.send_probe(0.01), 0.02)
    events = client.receive_data(server.data_to_send(), 0.05)
    assert [type(e) for e in events] == [ProbeAnswered, ProbeAnswered]
    assert isinstance(events[0], ProbeAnswered)
    assert events[0].rtt_s == pytest.approx(0.05) and events[0].reply.load_permille == 420
    assert events[0].reply.accepting and events[0].reply.version == PROTOCOL_VERSION

    server.receive_data(client.start_handshake(), 0.1)
    assert server.client_hello is not None and server.client_hello.user == "alice"
    (done,) = client.receive_data(server.data_to_send(), 0.2)
    assert isinstance(done, HandshakeComplete) and done.result.node_key == NODE.public_key
    # pipelined: ClientAuth and Attach leave in one write and arrive in one read
    wire = presence_wire()
    events = server.receive_data(client.send(Attach(wire)), 0.3)
    assert [type(e) for e in events] == [HandshakeComplete, MessageReceived]
    assert isinstance(events[0], HandshakeComplete)
    result = events[0].result
    assert result.client_key == ALICE.public_key and result.user == "alice"
    (attach,) = only_messages(events[1:])
    assert isinstance(attach, Attach)
    signed = verify_attach(attach, result, now=NOW)
    assert signed.wire == wire

    assert client.heartbeat_interval_s == 30.0
    client.receive_data(server.send(AttachOk("198.51.100.9", 40000, 20)), 0.4)
    assert client.heartbeat_interval_s == 20.0 and server.heartbeat_interval_s == 20.0

    (req,) = only_messages(server.receive_data(client.send(LookupRequest(7, "bob")), 1.0))
    bob_record = presence_wire(BOB, "bob", "laptop")
    response = LookupResponse(7, (bob_record, wire, b"junk"))
    (resp,) = only_messages(client.receive_data(server.send(response), 1.1))
    assert resp == response
    assert isinstance(resp, LookupResponse) and isinstance(req, LookupRequest)
    assert [s.wire for s in verify_lookup_response(resp, req.user, now=NOW)] == [bob_record]

    (sig,) = only_messages(server.receive_data(client.send(Signal(8, "bob", "", b"sdp")), 2.0))
    assert sig == Signal(8, "bob", "", b"sdp")
    delivery = SignalDelivery("bob", "laptop", BOB.public_key, b"answer")
    out = server.send(SignalResult(8, True)) + server.send(delivery)
    out += server.send(Moving("maintenance", ALTS))
    assert only_messages(client.receive_data(out, 2.1)) == [
        SignalResult(8, True), delivery, Moving("maintenance", ALTS),
    ]

    events = server.receive_data(client.close("switching supernode"), 3.0)
    assert events == [PeerClosed(Goodbye("switching supernode"), True)]
    assert client.closed and server.closed
    with pytest.raises(InvalidState):
        client.send(LookupRequest(9, "bob"))


def test_session_wrong_node_key_refused_and_reported_to_the_server() -> None:
    client = ClientConnection(ALICE, expected_node_key=OTHER_NODE.public_key, user="alice",
                              device="phone", now=0.0)
    server = ServerConnection(NODE, now=0.0)
    server.receive_data(client.start_handshake(), 0.0)
    (violation,) = client.receive_data(server.data_to_send(), 0.0)
    assert isinstance(violation, ProtocolViolation)
    assert isinstance(violation.error, UnexpectedNodeKey) and "expected" in violation.reason
    assert client.closed and client.result is None
    (closed,) = server.receive_data(client.data_to_send(), 0.0)
    assert isinstance(closed, PeerClosed) and not closed.authenticated
    assert closed.message.code == ErrorCode.HANDSHAKE_FAILED  # type: ignore[union-attr]


def test_session_impostor_client_is_refused() -> None:
    impostor = Impostor(MALLORY.signing_key, claimed=ALICE.public_key)
    client = ClientConnection(impostor, expected_node_key=NODE.public_key, user="alice",
                              device="phone", now=0.0)
    server = ServerConnection(NODE, now=0.0)
    server.receive_data(client.start_handshake(), 0.0)
    client_events, server_events = exchange(client, server)
    assert [type(e) for e in server_events] == [ProtocolViolation]
    assert isinstance(server_events[0], ProtocolViolation)
    assert isinstance(server_events[0].error, BadHandshakeSignature)
    assert server.result is None and server.closed
    # the client thought it was done, then gets the server's plaintext Error
    assert [type(e) for e in client_events] == [HandshakeComplete, PeerClosed]
    assert isinstance(client_events[1], PeerClosed) and not client_events[1].authenticated


def test_session_replayed_connection_is_refused() -> None:
    client = ClientConnection(ALICE, expected_node_key=NODE.public_key, user="alice",
                              device="phone", now=0.0)
    server = ServerConnection(NODE, now=0.0)
    hello = client.start_handshake()
    server.receive_data(hello, 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    rest = client.send(Attach(presence_wire()))
    events = server.receive_data(rest, 0.0)  # the original connection works
    assert [type(e) for e in events] == [HandshakeComplete, MessageReceived]
    recorded = hello + rest
    victim = ServerConnection(NODE, now=5.0)
    events = victim.receive_data(recorded, 5.0)
    assert [type(e) for e in events] == [ProtocolViolation]
    assert isinstance(events[0], ProtocolViolation)
    assert isinstance(events[0].error, BadHandshakeSignature)
    assert victim.result is None and victim.closed


def test_garbage_before_the_handshake_closes_with_a_clear_reason() -> None:
    server = ServerConnection(NODE, now=0.0)
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", 0.0)
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert isinstance(events[0].error, FrameTooLarge)
    assert "exceeds" in events[0].reason and "overlay protocol" in events[0].reason
    assert server.closed and server.state is ConnectionState.CLOSED
    (error_frame,) = frames_of(server.data_to_send())
    err = decode(error_frame)
    assert isinstance(err, Error) and err.code == ErrorCode.FRAME_TOO_LARGE
    assert server.receive_data(encode_frame(encode(Probe(N16, 1.0))), 0.1) == []
    assert server.handle_timer(100.0) == [] and server.data_to_send() == b""

    server = ServerConnection(NODE, now=0.0)
    (violation,) = server.receive_data(encode_frame(b"\x93\x01garbage"), 0.0)
    assert isinstance(violation, ProtocolViolation)
    assert isinstance(violation.error, MalformedMessage)

    client = ClientConnection(ALICE, expected_node_key=None, user="alice", device="phone",
                              now=0.0)
    client.start_handshake()
    (violation,) = client.receive_data(encode_frame(encode(Goodbye("?"))), 0.0)
    assert isinstance(violation, ProtocolViolation)
    assert isinstance(violation.error, UnexpectedMessage)


def test_garbage_after_the_handshake_closes_and_tells_the_peer() -> None:
    client, server = connect()
    events = server.receive_data(encode_frame(b"\x00" * 40) + encode_frame(b"more"), 1.0)
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert isinstance(events[0].error, DecryptError)
    assert server.closed
    # the Error is sealed, so the client knows it is really from the supernode
    (closed,) = client.receive_data(server.data_to_send(), 1.0)
    assert isinstance(closed, PeerClosed) and closed.authenticated
    assert closed.message.code == ErrorCode.DECRYPT_FAILED  # type: ignore[union-attr]


def test_messages_in_the_wrong_direction_are_violations() -> None:
    client, server = connect()
    with pytest.raises(InvalidState):
        client.send(AttachOk("192.0.2.1", 1, 30))
    with pytest.raises(InvalidState):
        server.send(Attach(b"x"))
    with pytest.raises(InvalidState):
        server.send(Ping(1, 1.0))
    assert server.result is not None
    forged = SecureChannel.from_handshake(server.result).seal(Attach(b"x"))  # nonce 0
    (violation,) = client.receive_data(forged, 1.0)
    assert isinstance(violation, ProtocolViolation)
    assert isinstance(violation.error, UnexpectedMessage) and "Attach" in violation.reason


def test_lookup_only_sessions() -> None:
    throwaway = Identity.generate()
    client, server = connect(client_identity=throwaway, user="", device="", lookup_only=True,
                             expected=None)
    assert server.result is not None and server.result.lookup_only
    assert server.result.user == "" and server.result.client_key == throwaway.public_key
    with pytest.raises(InvalidState):
        client.send(Attach(presence_wire()))
    with pytest.raises(InvalidState):
        client.send(Signal(1, "bob", "", b""))
    (req,) = only_messages(server.receive_data(client.send(LookupRequest(1, "bob")), 1.0))
    assert req == LookupRequest(1, "bob")
    with pytest.raises(AttachRejected):
        verify_attach(Attach(presence_wire()), server.result, now=NOW)
    # a modified client that sends Attach anyway is cut off
    assert client.result is not None
    channel = SecureChannel.from_handshake(client.result)
    channel.seal(LookupRequest(1, "bob"))  # the nonce already used above
    (violation,) = server.receive_data(channel.seal(Attach(presence_wire())), 2.0)
    assert isinstance(violation, ProtocolViolation) and "Attach" in violation.reason


@pytest.mark.parametrize(
    "wire, why",
    [
        (presence_wire(BOB, "bob", "phone"), "signed by another key"),
        (presence_wire(ALICE, "alice", "laptop"), "for alice/laptop"),
        (presence_wire(node=OTHER_NODE), "does not name this supernode"),
        (presence_wire()[:-1] + b"\x00", "bad_signature"),
        (records.supernode(NODE, "192.0.2.1", 4000, seq=1, now=NOW).wire, "presence record"),
        (b"\x00", "malformed"),
    ],
    ids=["other-key", "other-device", "other-node", "tampered", "supernode-record", "junk"],
)
def test_verify_attach_rejections(wire: bytes, why: str) -> None:
    _, server = connect()
    assert server.result is not None
    with pytest.raises(AttachRejected, match=why):
        verify_attach(Attach(wire), server.result, now=NOW)


@pytest.mark.parametrize(
    "claim, why",
    [
        (records.name_claim(BOB, "alice", seq=1, now=NOW).wire, "not this session's"),
        (records.name_claim(ALICE, "bob", seq=1, now=NOW).wire, "not this session's"),
        (presence_wire(), "is a name claim"),
        (b"\x00", "malformed"),
    ],
    ids=["other-key", "other-user", "presence-record", "junk"],
)
def test_verify_attach_claim_rejections(claim: bytes, why: str) -> None:
    _, server = connect()
    assert server.result is not None
    with pytest.raises(AttachRejected, match=why):
        verify_attach_claim(Attach(presence_wire(), claim), server.result, now=NOW)
    good = records.name_claim(ALICE, "alice", seq=1, now=NOW)
    assert verify_attach_claim(Attach(presence_wire(), good.wire), server.result,
                               now=NOW) == good
    assert verify_attach_claim(Attach(presence_wire()), server.result, now=NOW) is None


def test_handshake_deadline() -> None:
    server = ServerConnection(NODE, now=100.0)
    assert server.get_timer() == 110.0
    assert server.handle_timer(109.9) == []
    (violation,) = server.handle_timer(110.0)
    assert isinstance(violation, ProtocolViolation)
    assert isinstance(violation.error, HandshakeTimeout) and "10 s" in violation.reason
    assert server.closed and server.get_timer() is None
    err = decode(body_of(server.data_to_send()))
    assert isinstance(err, Error) and err.code == ErrorCode.TIMEOUT
    # a client stuck half-way times out the same way
    client = ClientConnection(ALICE, expected_node_key=None, user="alice", device="phone",
                              now=0.0, config=SessionConfig(handshake_timeout_s=2.0))
    client.start_handshake()
    assert [type(e) for e in client.handle_timer(2.0)] == [ProtocolViolation]


def test_heartbeats_pongs_and_dead_peers() -> None:
    client, server = connect(now=0.0)
    assert client.get_timer() == 30.0
    assert client.handle_timer(29.9) == []
    assert client.handle_timer(30.0) == [HeartbeatDue(1)]
    assert client.handle_timer(30.5) == []  # one Ping per silent interval
    ping_bytes = client.data_to_send()
    assert server.receive_data(ping_bytes, 30.1) == []  # answered automatically
    events = client.receive_data(server.data_to_send(), 30.2)
    assert len(events) == 1 and isinstance(events[0], PongReceived)
    assert events[0].rtt_s == pytest.approx(0.2)
    assert client.handle_timer(59.0) == [] and client.get_timer() == pytest.approx(60.2)
    # the supernode goes silent
    assert client.handle_timer(60.2) == [HeartbeatDue(1)]
    assert client.handle_timer(90.2) == [HeartbeatDue(2)]
    assert client.get_timer() == pytest.approx(120.2)
    (dead,) = client.handle_timer(120.2)
    assert isinstance(dead, PeerDead) and dead.missed == 3 and dead.silent_s == pytest.approx(90)
    assert client.closed and client.handle_timer(500.0) == []
    # any authenticated traffic counts as a heartbeat for the server
    assert server.handle_timer(29.0) == []
    server.receive_data(client.data_to_send(), 31.0)  # the client's two Pings
    assert server.handle_timer(60.0) == []


def test_handling_the_timer_when_due_always_makes_progress() -> None:
    start = 0.1 + 0.2  # not exactly representable: deadlines must not stall on rounding
    config = SessionConfig(heartbeat_interval_s=0.1)
    client, _ = connect(now=start, config=config)
    seen: list[Event] = []
    for _ in range(3):
        deadline = client.get_timer()
        assert deadline is not None
        events = client.handle_timer(deadline)
        assert len(events) == 1
        seen += events
    assert [type(e) for e in seen] == [HeartbeatDue, HeartbeatDue, PeerDead]
    assert client.get_timer() is None
    # a timer that fires very late goes straight to PeerDead
    late, _ = connect()
    assert [type(e) for e in late.handle_timer(1000.0)] == [PeerDead]


def test_heartbeat_configuration_and_manual_ping() -> None:
    config = SessionConfig(heartbeat_interval_s=5.0, max_missed_heartbeats=2)
    client, server = connect(config=config)
    assert server.handle_timer(5.0) == [HeartbeatDue(1)]
    assert [type(e) for e in server.handle_timer(10.0)] == [PeerDead]
    events = server.receive_data(client.ping(1.0), 1.5)
    assert events == []  # closed sessions ignore input
    client2, server2 = connect(config=config)
    server2.receive_data(client2.ping(1.0), 1.5)
    (pong,) = client2.receive_data(server2.data_to_send(), 2.0)
    assert pong == PongReceived(0, 1.0)


def test_unsolicited_pong_is_a_violation() -> None:
    client, server = connect()
    assert server.result is not None
    forged = SecureChannel.from_handshake(server.result).seal(Pong(99, 1.0))
    (violation,) = client.receive_data(forged, 1.0)
    assert isinstance(violation, ProtocolViolation) and "Pong" in violation.reason


def test_api_misuse_raises_invalid_state() -> None:
    client = ClientConnection(ALICE, expected_node_key=None, user="alice", device="phone",
                              now=0.0)
    with pytest.raises(InvalidState):
        client.send(LookupRequest(1, "bob"))
    with pytest.raises(InvalidState):
        client.ping(0.0)
    client.start_handshake()
    with pytest.raises(InvalidState):
        client.start_handshake()
    with pytest.raises(InvalidState):
        client.send_probe(0.0)
    assert client.close("never mind") == b""  # nothing to say before the channel is up
    assert client.closed


def test_probe_limits() -> None:
    config = SessionConfig(max_probes=2)
    server = ServerConnection(NODE, now=0.0, config=config, accepting=False)
    probe = encode_frame(encode(Probe(N16, 1.0)))
    assert server.receive_data(probe * 2, 0.0) == []
    replies = [decode(b) for b in frames_of(server.data_to_send())]
    assert replies == [ProbeReply(N16, 1.0, PROTOCOL_VERSION, False, 0)] * 2
    (violation,) = server.receive_data(probe, 0.0)
    assert isinstance(violation, ProtocolViolation) and "probes" in violation.reason
    # no probing once the hello is in
    client = ClientConnection(ALICE, expected_node_key=None, user="alice", device="phone",
                              now=0.0)
    server = ServerConnection(NODE, now=0.0)
    events = server.receive_data(client.start_handshake() + probe, 0.0)
    assert [type(e) for e in events] == [ProtocolViolation]
    # a reply to a probe the client never sent
    client = ClientConnection(ALICE, expected_node_key=None, user="alice", device="phone",
                              now=0.0)
    reply = encode_frame(encode(ProbeReply(N16, 1.0, 1, True, 0)))
    assert [type(e) for e in client.receive_data(reply, 0.0)] == [ProtocolViolation]


def test_refused_then_closed() -> None:
    client, server = connect()
    out = server.send(Refused(int(RefuseReason.FULL), "full, go elsewhere", ALTS))
    out += server.close("full")
    events = client.receive_data(out, 1.0)
    assert events == [
        MessageReceived(Refused(1, "full, go elsewhere", ALTS)),
        PeerClosed(Goodbye("full"), True),
    ]
    assert server.closed and client.closed


def test_random_input_never_escapes_as_an_exception() -> None:
    rng = random.Random(99)
    for trial in range(200):
        server = ServerConnection(NODE, now=0.0)
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        if trial % 2:  # start from a plausible small prefix
            data = rng.randint(0, 80).to_bytes(4, "big") + data
        events = server.receive_data(data, 0.0)
        assert all(isinstance(e, ProtocolViolation) for e in events)
        assert len(events) <= 1
    _, server = connect()
    for _ in range(50):
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 100)))
        for e in server.receive_data(chunk, 1.0):
            assert isinstance(e, ProtocolViolation)
    assert server.closed


try:  # property tests only when hypothesis happens to be installed (it is not a dependency)
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    pass
else:

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.binary(max_size=200))
    def test_decode_arbitrary_bytes_only_raises_malformed(data: bytes) -> None:
        try:
            decode(data)
        except MalformedMessage:
            pass

    @settings(max_examples=100, deadline=None, derandomize=True)
    @given(
        st.lists(st.binary(max_size=300), max_size=8),
        st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20),
    )
    def test_decoder_is_chunking_independent(bodies: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(encode_frame(b) for b in bodies)
        decoder, out, pos, i = FrameDecoder(), [], 0, 0
        while pos < len(stream):
            step = cuts[i % len(cuts)]
            out += decoder.feed(stream[pos : pos + step])
            pos, i = pos + step, i + 1
        assert out == bodies and decoder.buffered == 0
