"""The responder's reading of a path's first bytes (:mod:`overlay.media.selection`):
keepalives the initiator sends on a call's spare path before it SELECTs it are dropped, in
whatever pieces the stream delivers them; anything else first is not a selection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overlay.media.selection import KEEPALIVE, MIRROR, SELECT, Selection, read_selection


def feed(chunks: list[bytes]) -> tuple[Selection, bytes]:
    """Read as ``connect_as_responder`` does: chunk by chunk until the state is decided;
    returns it and what the path's user then reads (the rest, then the chunks not read)."""
    first = read_selection(b"")
    for i, chunk in enumerate(chunks):
        if first.state != "more":
            return first, first.rest + b"".join(chunks[i:])
        first = read_selection(first.rest + chunk)
    return first, first.rest


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_select_alone_and_with_data() -> None:
    assert read_selection(SELECT) == Selection("selected", b"")
    assert read_selection(SELECT + b"frame") == Selection("selected", b"frame")


def test_keepalives_before_select_are_dropped() -> None:
    assert read_selection(KEEPALIVE * 3 + SELECT + b"x") == Selection("selected", b"x")
    assert read_selection(KEEPALIVE * 2) == Selection("more", b"")
    assert read_selection(KEEPALIVE + SELECT[:3]) == Selection("more", SELECT[:3])


def test_anything_else_first_is_not_a_selection() -> None:
    assert read_selection(b"\x00SELECX\x00").state == "other"
    assert read_selection(b"GET / HTTP/1.1\r\n").state == "other"
    assert read_selection(b"G").state == "other"  # no mark starts so
    assert read_selection(KEEPALIVE + b"\x01").state == "other"
    # a keepalive after SELECT is the path's data, not dropped
    assert read_selection(SELECT + KEEPALIVE) == Selection("selected", KEEPALIVE)


@given(st.integers(0, 5), st.binary(max_size=40), st.lists(st.integers(0, 200), max_size=8))
def test_any_pieces_give_the_selection_and_the_data_after_it(
        keepalives: int, payload: bytes, cuts: list[int]) -> None:
    data = KEEPALIVE * keepalives + SELECT + payload
    state, after = feed(split(data, cuts))
    assert state.state == "selected"
    assert after == payload


@given(st.integers(0, 5), st.lists(st.integers(0, 100), max_size=8))
def test_keepalives_then_the_end_of_the_stream_is_no_selection(
        keepalives: int, cuts: list[int]) -> None:
    data = KEEPALIVE * keepalives + SELECT[:5]
    state, _ = feed(split(data, cuts))
    assert state.state == "more"  # the stream ended: the responder takes it as not selected


@given(st.integers(0, 5), st.binary(max_size=40), st.lists(st.integers(0, 200), max_size=8))
def test_a_mirror_mark_after_keepalives_gives_the_data_after_it(
        keepalives: int, payload: bytes, cuts: list[int]) -> None:
    data = KEEPALIVE * keepalives + MIRROR + payload
    state, after = feed(split(data, cuts))
    assert state.state == "mirrored"
    assert after == payload
