"""Generic hypothesis strategies for hostile input: random bytes, msgpack values of any
shape, and mutations of valid examples (bit flips, truncation, extension, and msgpack-level
field replacement, deletion and insertion)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from hypothesis import strategies as st

#: msgpack scalars of every wire type, biased towards the edges decoders check
SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, -1, 255, 256, 65535, 65536, 2**32, 2**63 - 1, 2**64 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.binary(max_size=80),
    st.sampled_from([b"\x00" * 16, b"\x01" * 20, b"\x02" * 32, b"\x03" * 64]),
    st.sampled_from(["", "a", "alice", "127.0.0.1", "::1", "invite", "answer", "file"]),
)

VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 9)), inner, max_size=4),
    ),
    max_leaves=12,
)


def pack(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


@st.composite
def _bit_flips(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    if not data:
        return bytes(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def _cut_or_grow(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    data = draw(st.sampled_from(seeds))
    if draw(st.booleans()):
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    return data + draw(st.binary(min_size=1, max_size=32))


def _swap(value: Any, path: list[int], new: Any, how: int) -> Any:
    """``value`` with the item at ``path`` replaced (0), deleted (1) or preceded by ``new``
    (2); lists only, other containers are replaced whole."""
    if not path or not isinstance(value, list) or not value:
        return new
    i = path[0] % len(value)
    out = list(value)
    if len(path) > 1 and isinstance(out[i], list) and out[i]:
        out[i] = _swap(out[i], path[1:], new, how)
    elif how == 1:
        del out[i]
    elif how == 2:
        out.insert(i, new)
    else:
        out[i] = new
    return out


@st.composite
def mutated_value(draw: st.DrawFn, seeds: Sequence[Any]) -> Any:
    """A valid msgpack value (``seeds``) with one field replaced, deleted or inserted, at
    any depth, by a value of any type."""
    value = draw(st.sampled_from(seeds))
    path = draw(st.lists(st.integers(0, 63), min_size=1, max_size=3))
    return _swap(value, path, draw(VALUES), draw(st.integers(0, 2)))


def mutated_bytes(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, or a valid encoding with bit flips, cut short or extended."""
    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from(seeds),
        _bit_flips(seeds),
        _cut_or_grow(seeds),
    )


def msgpack_shaped(
    seeds: Sequence[Any], encode: Callable[[Any], bytes] = pack
) -> st.SearchStrategy[bytes]:
    """``encode`` of valid values with fields mutated, of arbitrary msgpack values, plus
    :func:`mutated_bytes` of the valid encodings."""
    encoded = [encode(s) for s in seeds]
    return st.one_of(
        mutated_bytes(encoded),
        st.builds(encode, mutated_value(seeds)),
        st.builds(pack, VALUES),
    )
