"""The one way hostile msgpack is decoded: every length bounded before allocation."""

from __future__ import annotations

from typing import Any

import msgpack

from overlay.core.errors import OverlayError


class NotMsgpack(OverlayError, ValueError):
    """The bytes are not msgpack within the limits; the message names msgpack's complaint."""


def unpack_strict(data: bytes, *, max_len: int, max_array: int = 64, max_map: int = 0) -> Any:
    """Decode ``data`` with str/bin at most ``max_len`` bytes, arrays of at most ``max_array``
    items, maps of at most ``max_map`` pairs with str keys, and no extension types."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=max_array,
            max_map_len=max_map,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise NotMsgpack(type(exc).__name__) from None
