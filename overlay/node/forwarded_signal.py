"""The arguments of the DHT method ``signal``, parsed once (sans-IO).

On the wire a forwarded signal is the argument list ``[from_user, from_device, from_key,
to_user, to_device, payload]`` (see docs/ARCHITECTURE.md); :class:`ForwardedSignal` is that
list with every type checked exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeVar

from overlay.attach.session_messages import SignalDelivery
from overlay.core.records import check_name
from overlay.node.errors import BadSignal

_SCHEMA = "signal takes from_user, from_device, from_key, to_user, to_device, payload"

_T = TypeVar("_T")


def _exactly(kind: type[_T], value: object) -> _T:
    """``value`` if its type is exactly ``kind`` (no subclasses: msgpack gives exact types)."""
    if type(value) is not kind:
        raise BadSignal(_SCHEMA)
    return value


@dataclass(frozen=True)
class ForwardedSignal:
    """The arguments of the DHT method ``signal``: who sent it, to whom, and the payload."""

    from_user: str
    from_device: str
    #: the sender's identity key, as its supernode saw it in the session's handshake
    from_key: bytes
    to_user: str
    to_device: str
    payload: bytes

    @classmethod
    def from_args(cls, args: list[object]) -> ForwardedSignal:
        """Parse the request's argument list; raises :class:`BadSignal` (a ``ValueError``)."""
        if len(args) != 6:
            raise BadSignal(_SCHEMA)
        signal = cls(
            from_user=_exactly(str, args[0]),
            from_device=_exactly(str, args[1]),
            from_key=_exactly(bytes, args[2]),
            to_user=_exactly(str, args[3]),
            to_device=_exactly(str, args[4]),
            payload=_exactly(bytes, args[5]),
        )
        try:
            check_name(signal.to_user, "to_user")
            check_name(signal.to_device, "to_device")
            signal.delivery()
        except Exception as exc:
            raise BadSignal(f"bad signal: {exc}") from None
        return signal

    def to_args(self) -> list[object]:
        """The request's argument list, in wire order."""
        return [self.from_user, self.from_device, self.from_key, self.to_user,
                self.to_device, self.payload]

    def digest(self) -> bytes:
        """SHA-256 over every field, each length-prefixed: the same signal asked again."""
        h = hashlib.sha256()
        for part in (self.from_user.encode(), self.from_device.encode(), self.from_key,
                     self.to_user.encode(), self.to_device.encode(), self.payload):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def delivery(self) -> SignalDelivery:
        """The message the receiving client gets (checks the sender's fields and payload)."""
        return SignalDelivery(self.from_user, self.from_device, self.from_key, self.payload)
