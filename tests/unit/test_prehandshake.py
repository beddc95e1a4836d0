"""The pre-handshake gate: whole frames one at a time, oversized prefixes refused."""

from __future__ import annotations

import pytest

from overlay.attach.errors import FrameTooLarge, PreHandshakeFrameTooLarge
from overlay.attach.frames import encode_frame
from overlay.attach.prehandshake import PreHandshakeGate


def test_pieces_end_at_frame_boundaries_and_may_stop_early():
    gate = PreHandshakeGate(16)
    a, b = encode_frame(b"x" * 10), encode_frame(b"")
    big_after = encode_frame(b"y" * 100)  # e.g. sealed, after the handshake: not gated
    pieces = gate.pieces(a + b + big_after)
    assert next(pieces) == a
    assert next(pieces) == b
    assert gate.held == 0


def test_partial_frames_are_held_and_counted():
    gate = PreHandshakeGate(16)
    frame = encode_frame(b"z" * 12)
    assert list(gate.pieces(frame[:2])) == [frame[:2]]
    assert gate.held == 2
    assert list(gate.pieces(frame[2:9])) == [frame[2:9]]
    assert gate.held == 9
    assert list(gate.pieces(frame[9:])) == [frame[9:]]
    assert gate.held == 0


def test_an_oversized_prefix_is_refused_after_the_frames_before_it():
    gate = PreHandshakeGate(16)
    ok = encode_frame(b"a")
    pieces = gate.pieces(ok + (60 * 1024).to_bytes(4, "big") + b"\0" * 100)
    assert next(pieces) == ok
    with pytest.raises(PreHandshakeFrameTooLarge):
        next(pieces)


def test_a_prefix_over_any_frames_cap_is_a_plain_frame_too_large():
    gate = PreHandshakeGate(16)
    with pytest.raises(FrameTooLarge) as caught:
        next(gate.pieces(b"\xff\xff\xff\xf0"))
    assert caught.value.reason == "frame_too_large"
