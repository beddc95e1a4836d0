"""The datagram relay's fast path (C: _forwarder.c)."""

from collections.abc import Callable

from overlay.relay.datagram import Address, LeaseUse

class Forwarder:
    leases: int
    forwarded: int
    send_errors: int

    def __init__(self, fd: int, slow: Callable[[bytes, Address], None], magic: bytes,
                 max_datagram: int, consent_s: float, amplification: int) -> None: ...
    def put(self, a: Address, b: Address, heard_a: float, heard_b: float, room_a: int,
            room_b: int, credit: int, /) -> int: ...
    def take(self, handle: int, /) -> LeaseUse: ...
    def on_readable(self) -> None: ...
