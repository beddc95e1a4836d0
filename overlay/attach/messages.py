"""The attachment messages' registry and codec: every tag, :func:`encode`, :func:`decode`.

The messages are typed frozen dataclasses with strict schemas, defined by phase in
:mod:`~overlay.attach.handshake_messages` (plaintext) and
:mod:`~overlay.attach.session_messages` (sealed) on the base and field checks of
:mod:`~overlay.attach.schema`; this module re-exports them all.

A message body is the canonical msgpack array ``[tag, *fields]`` (``use_bin_type``: bytes
are msgpack bin, text is msgpack str). :func:`decode` accepts only exactly that: a known
tag, the exact number of fields, exact types (``True`` is not an int, ``1`` is not a
float), bounded lengths, checked patterns, no maps or ext types, and the same bytes
:func:`encode` would produce. Anything else raises :class:`MalformedMessage`.

=====  ===================  =====  ====================================================
 tag   message              when   fields
=====  ===================  =====  ====================================================
   1   Probe                plain  nonce: bin16, sent_at: float
   2   ProbeReply           plain  nonce: bin16, sent_at: float, version: u8,
                                   accepting: bool, load_permille: 0..1000
   3   ClientHello          plain  version: u8, client_ephemeral_pk: bin32,
                                   client_identity_pk: bin32, user: name|"",
                                   device: name|"", nonce: bin16, flags: u32
   4   ServerHello          plain  version: u8, server_ephemeral_pk: bin32,
                                   server_node_pk: bin32, nonce: bin16, signature: bin64
   5   ClientAuth           plain  signature: bin64
   6   Error                both   code: u16, message: text
  16   Attach               sealed presence_record: bin 1..1024
  17   AttachOk             sealed reflexive_host: ip, reflexive_port: 1..65535,
                                   heartbeat_s: 1..3600
  18   Refused              sealed reason_code: u16, message: text,
                                   alternatives: [[ip, port, node_key: bin32|bin0]] <= 16
  19   Moving               sealed reason: text, alternatives (as Refused)
  20   Goodbye              sealed reason: text
  21   Ping                 sealed seq: u64, sent_at: float
  22   Pong                 sealed seq: u64, sent_at: float (both echoed from the Ping)
  23   Detach               sealed presence_record: bin 1..1024 (an offline record)
  32   LookupRequest        sealed request_id: u64, user: name
  33   LookupResponse       sealed request_id: u64, records: [bin 1..1024] <= 32
  34   DirectoryRequest     sealed request_id: u64
  35   DirectoryResponse    sealed request_id: u64, records (as LookupResponse)
  36   ReachabilityRequest  sealed request_id: u64, port: 1..65535
  37   ReachabilityResult   sealed request_id: u64, host: ip, tcp_ok: bool, udp_ok: bool
  48   Signal               sealed request_id: u64, to_user: name, to_device: name|"",
                                   payload: bin <= 16384
  49   SignalDelivery       sealed from_user: name, from_device: name, from_key: bin32,
                                   payload: bin <= 16384
  50   SignalResult         sealed request_id: u64, ok: bool, reason: text
  52   RelayReserve         sealed request_id: u64, token_hash: bin32
  53   RelayReserved        sealed request_id: u64, ok: bool, reason: text,
                                   ttl_s: float 0..3600
=====  ===================  =====  ====================================================

``name`` is a user or device name as in :mod:`overlay.core.records` (``[a-z0-9][a-z0-9._-]{0,63}``);
``text`` is printable, at most 256 characters; ``ip`` is a textual IPv4/IPv6 address;
floats are finite. ``ClientHello`` may leave user and device empty only with the
``LOOKUP_ONLY`` flag.
"""

from __future__ import annotations

import msgpack

from overlay.attach.errors import MalformedMessage, UnknownMessageType
from overlay.attach.frames import MAX_FRAME_BYTES
from overlay.attach.handshake_messages import (
    KNOWN_HELLO_FLAGS,
    ClientAuth,
    ClientHello,
    Error,
    HelloFlags,
    Probe,
    ProbeReply,
    ServerHello,
)
from overlay.attach.schema import (
    MAX_ALTERNATIVES,
    MAX_HOST_CHARS,
    MAX_LOOKUP_RECORDS,
    MAX_SIGNAL_PAYLOAD_BYTES,
    MAX_TEXT_CHARS,
    NONCE_BYTES,
    Message,
    MessageType,
)
from overlay.attach.session_messages import (
    Alternative,
    Attach,
    AttachOk,
    Detach,
    DirectoryRequest,
    DirectoryResponse,
    Goodbye,
    LookupRequest,
    LookupResponse,
    Moving,
    Ping,
    Pong,
    ReachabilityRequest,
    ReachabilityResult,
    Refused,
    RefuseReason,
    RelayReserve,
    RelayReserved,
    Signal,
    SignalDelivery,
    SignalResult,
)
from overlay.core.strict_msgpack import NotMsgpack, unpack_strict

__all__ = [
    "CLIENT_SENDS",
    "KNOWN_HELLO_FLAGS",
    "LOOKUP_ONLY_SENDS",
    "MAX_ALTERNATIVES",
    "MAX_HOST_CHARS",
    "MAX_LOOKUP_RECORDS",
    "MAX_SIGNAL_PAYLOAD_BYTES",
    "MAX_TEXT_CHARS",
    "MESSAGE_TYPES",
    "NONCE_BYTES",
    "PLAINTEXT_TYPES",
    "SEALED_TYPES",
    "SERVER_SENDS",
    "Alternative",
    "Attach",
    "AttachOk",
    "ClientAuth",
    "ClientHello",
    "Detach",
    "DirectoryRequest",
    "DirectoryResponse",
    "Error",
    "Goodbye",
    "HelloFlags",
    "LookupRequest",
    "LookupResponse",
    "Message",
    "MessageType",
    "Moving",
    "Ping",
    "Pong",
    "Probe",
    "ProbeReply",
    "ReachabilityRequest",
    "ReachabilityResult",
    "RefuseReason",
    "Refused",
    "RelayReserve",
    "RelayReserved",
    "ServerHello",
    "Signal",
    "SignalDelivery",
    "SignalResult",
    "decode",
    "encode",
]


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (
        Probe, ProbeReply, ClientHello, ServerHello, ClientAuth, Error, Attach, AttachOk,
        Refused, Moving, Goodbye, Ping, Pong, LookupRequest, LookupResponse, Signal,
        SignalDelivery, SignalResult, DirectoryRequest, DirectoryResponse, Detach,
        ReachabilityRequest, ReachabilityResult, RelayReserve, RelayReserved,
    )
}
assert len(MESSAGE_TYPES) == len(MessageType)

#: Messages that travel unencrypted, before the handshake completes.
PLAINTEXT_TYPES: frozenset[type[Message]] = frozenset(
    {Probe, ProbeReply, ClientHello, ServerHello, ClientAuth, Error}
)
#: Messages that travel inside the secure channel.
SEALED_TYPES: frozenset[type[Message]] = frozenset(
    {cls for cls in MESSAGE_TYPES.values() if cls not in PLAINTEXT_TYPES} | {Error}
)
#: Sealed messages each side may send.
CLIENT_SENDS: frozenset[type[Message]] = frozenset(
    {Attach, Detach, Ping, Pong, LookupRequest, DirectoryRequest, Signal, ReachabilityRequest,
     RelayReserve, Goodbye, Error}
)
SERVER_SENDS: frozenset[type[Message]] = frozenset(
    {AttachOk, Refused, Moving, Goodbye, Ping, Pong, LookupResponse, DirectoryResponse,
     SignalDelivery, SignalResult, ReachabilityResult, RelayReserved, Error}
)
#: What a LOOKUP_ONLY client may send.
LOOKUP_ONLY_SENDS: frozenset[type[Message]] = frozenset(
    {Ping, Pong, LookupRequest, DirectoryRequest, Goodbye, Error}
)


def encode(msg: Message) -> bytes:
    """The canonical body of ``msg``."""
    if not isinstance(msg, Message) or type(msg) not in MESSAGE_TYPES.values():
        raise TypeError(f"not a wire message: {type(msg).__name__}")
    body: bytes = msgpack.packb([int(msg.TAG), *msg._to_wire()], use_bin_type=True)
    return body


def decode(body: bytes) -> Message:
    """Parse a body; raise :class:`MalformedMessage` unless it is exactly a valid message."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise MalformedMessage(f"a message body is bytes, not {type(body).__name__}")
    body = bytes(body)
    if len(body) > MAX_FRAME_BYTES:
        raise MalformedMessage(f"message body of {len(body)} bytes is too large")
    try:
        values = unpack_strict(body, max_len=MAX_FRAME_BYTES)
    except NotMsgpack as exc:
        raise MalformedMessage(f"not a msgpack message: {exc}") from None
    if type(values) is not list or not values:
        raise MalformedMessage(f"a message is a non-empty array, not {type(values).__name__}")
    tag = values[0]
    if type(tag) is not int:
        raise MalformedMessage(f"message tag must be an int, not {type(tag).__name__}")
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise UnknownMessageType(f"unknown message tag {tag}")
    if len(values) - 1 != cls.arity():
        raise MalformedMessage(
            f"{cls.__name__} has {cls.arity()} fields, got {len(values) - 1}"
        )
    msg = cls._from_wire(values[1:])
    if encode(msg) != body:
        raise MalformedMessage(f"{cls.__name__} is not canonically encoded")
    return msg
