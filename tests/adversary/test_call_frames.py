"""Call media frames against an on-path attacker (issue 15).

The attacker sees every datagram of a call (it runs the relay, or sits on the path), knows the
wire format of docs/ARCHITECTURE.md ("Calls"), and can send anything from anywhere; it does
not hold the call's shared secret. Every datagram below is built from captured bytes or from
scratch, as that attacker would; the receiver must refuse each one with a typed error and must
still take the next honest frame.
"""

from __future__ import annotations

import os
import struct

import pytest

from overlay.call.errors import BadFrame
from overlay.call.frames import (
    HEADER_BYTES,
    MAX_DATAGRAM_BYTES,
    REPLAY_WINDOW,
    FrameOpener,
    FrameSealer,
    call_keys,
)

SECRET = os.urandom(32)
CALL_ID = os.urandom(8)


def _pair() -> tuple[FrameSealer, FrameOpener, FrameSealer, FrameOpener]:
    keys = call_keys(SECRET, CALL_ID)
    return (FrameSealer(keys, CALL_ID, caller=True), FrameOpener(keys, CALL_ID, caller=False),
            FrameSealer(keys, CALL_ID, caller=False), FrameOpener(keys, CALL_ID, caller=True))


def test_replayed_frame_is_refused_and_the_call_goes_on() -> None:
    send, recv, _, _ = _pair()
    first = send.seal(100, b"voice" * 10)
    assert recv.open(first).payload == b"voice" * 10
    with pytest.raises(BadFrame) as err:
        recv.open(first)
    assert err.value.reason == "replay"
    assert recv.open(send.seal(120, b"next")).seq == 1


def test_replay_of_an_old_frame_after_reordering_is_refused() -> None:
    send, recv, _, _ = _pair()
    captured = [send.seal(i * 20, b"x") for i in range(10)]
    for wire in reversed(captured):  # reordered delivery is fine, once each
        recv.open(wire)
    for wire in captured:
        with pytest.raises(BadFrame, match="replay"):
            recv.open(wire)


def test_frame_older_than_the_window_is_refused() -> None:
    send, recv, _, _ = _pair()
    old = send.seal(0, b"old")
    send.next_seq = REPLAY_WINDOW + 5
    recv.open(send.seal(1, b"new"))
    with pytest.raises(BadFrame, match="replay"):
        recv.open(old)  # never seen, but too old to tell: refused


def test_forged_frame_without_the_secret_is_refused() -> None:
    _, recv, _, _ = _pair()
    attacker = FrameSealer(call_keys(os.urandom(32), CALL_ID), CALL_ID, caller=True)
    attacker.next_seq = 5
    with pytest.raises(BadFrame, match="authentication"):
        recv.open(attacker.seal(0, b"evil"))
    # the forged sequence number did not move the window: the honest frame 5 still opens
    send = FrameSealer(call_keys(SECRET, CALL_ID), CALL_ID, caller=True)
    send.next_seq = 5
    assert recv.open(send.seal(0, b"ok")).payload == b"ok"


@pytest.mark.parametrize("field", ["seq", "sent_ms", "call_id", "payload", "tag"])
def test_altered_captured_frame_is_refused(field: str) -> None:
    send, recv, _, _ = _pair()
    wire = bytearray(send.seal(40, b"payload bytes"))
    offset = {"call_id": 4, "seq": 12 + 7, "sent_ms": 20, "payload": HEADER_BYTES,
              "tag": len(wire) - 1}[field]
    wire[offset] ^= 0x01
    with pytest.raises(BadFrame):
        recv.open(bytes(wire))


@pytest.mark.parametrize("cut", [0, 1, 3, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 15])
def test_truncated_frame_is_refused(cut: int) -> None:
    send, recv, _, _ = _pair()
    wire = send.seal(0, b"")
    with pytest.raises(BadFrame):
        recv.open(wire[:cut])
    assert recv.open(wire).payload == b""


def test_reflected_frame_is_refused() -> None:
    """A frame of mine sent back to me (same call, my own direction) never opens."""
    caller_send, _, _, caller_recv = _pair()
    mine = caller_send.seal(0, b"hello")
    with pytest.raises(BadFrame, match="direction"):
        caller_recv.open(mine)
    # and with the direction byte flipped, the key and the nonce no longer match
    flipped = bytearray(mine)
    flipped[3] ^= 1
    with pytest.raises(BadFrame, match="authentication"):
        caller_recv.open(bytes(flipped))


def test_frame_of_another_call_is_refused() -> None:
    send, _, _, _ = _pair()
    other_id = os.urandom(8)
    other = FrameOpener(call_keys(SECRET, other_id), other_id, caller=False)
    with pytest.raises(BadFrame, match="call"):
        other.open(send.seal(0, b"x"))


def test_oversized_and_garbage_datagrams_are_refused_before_decryption() -> None:
    _, recv, _, _ = _pair()
    for junk in (os.urandom(MAX_DATAGRAM_BYTES + 1), b"\x00" * 64, os.urandom(200),
                 b"\x8cC\x09\x00" + bytes(60)):
        with pytest.raises(BadFrame):
            recv.open(junk)
    assert recv.opened == 0


def test_nonce_is_never_reused_by_the_sender() -> None:
    send, _, _, _ = _pair()
    seqs = [struct.unpack_from(">Q", send.seal(0, b"a"), 12)[0] for _ in range(100)]
    assert seqs == list(range(100))
    send.next_seq = 2**64 - 1
    with pytest.raises(BadFrame, match="exhausted"):
        send.seal(0, b"a")
