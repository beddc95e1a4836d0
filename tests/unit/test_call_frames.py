"""The call frame's replay window (RFC 6479) and round trip; attacks are in
tests/adversary/test_call_frames.py."""

from __future__ import annotations

import random

from overlay.call.frames import (
    MAX_PAYLOAD_BYTES,
    REPLAY_WINDOW,
    FrameOpener,
    FrameSealer,
    ReplayWindow,
    call_keys,
    new_call_id,
)


def test_round_trip_both_directions() -> None:
    call_id = new_call_id()
    keys = call_keys(b"\x05" * 32, call_id)
    a_send, b_recv = FrameSealer(keys, call_id, caller=True), FrameOpener(keys, call_id,
                                                                          caller=False)
    b_send, a_recv = FrameSealer(keys, call_id, caller=False), FrameOpener(keys, call_id,
                                                                           caller=True)
    frame = b_recv.open(a_send.seal(2**32 + 7, b"a" * MAX_PAYLOAD_BYTES))
    assert (frame.seq, frame.sent_ms, frame.payload) == (0, 7, b"a" * MAX_PAYLOAD_BYTES)
    assert a_recv.open(b_send.seal(1, b"b")).payload == b"b"
    assert a_send.seal(0, b"") != b_send.seal(0, b"")  # different keys, same seq


def test_window_agrees_with_a_set_model() -> None:
    rng = random.Random(7)
    window, seen, top = ReplayWindow(), set(), -1
    for _ in range(20000):
        seq = max(0, top + rng.randint(-REPLAY_WINDOW - 50, 40))
        expected = seq not in seen and (seq > top or top - seq < REPLAY_WINDOW)
        assert window.fresh(seq) == expected, seq
        if expected:
            window.mark(seq)
            seen.add(seq)
            top = max(top, seq)


def test_window_jump_forgets_everything_behind() -> None:
    window = ReplayWindow()
    window.mark(0)
    window.mark(10 * REPLAY_WINDOW)
    assert not window.fresh(0) and not window.fresh(10 * REPLAY_WINDOW)
    assert window.fresh(10 * REPLAY_WINDOW - 1)
