"""Where the media service meets the transports: end-to-end securing of a raw path, the
client's UDP media socket (binding, NAT type, hole punching with QUIC on top).

Kept in one place so the service reads as a sequence of decisions, and so a transport can be
swapped without touching it.
"""

from __future__ import annotations

import importlib
from typing import Any

from overlay.identity import Identity
from overlay.media.signalling import Address, Candidates
from overlay.media.stream import ByteStream
from overlay.session_io import ClientSession

SECURE_TIMEOUT_S = 5.0


async def secure(raw: ByteStream, shared: bytes, transcript: bytes, initiator: bool
                 ) -> ByteStream:
    module = importlib.import_module("overlay.media.secure_stream")
    secured: ByteStream = await module.secure(raw, shared, transcript, initiator,
                                              SECURE_TIMEOUT_S)
    return secured


async def open_udp(identity: Identity) -> Any:
    """The client's media UDP socket, or None where UDP transports are not available."""
    return None


async def close_udp(udp: Any) -> None:
    return None


async def udp_candidates(
    udp: Any, identity: Identity, session: ClientSession, local_ip: str
) -> tuple[list[Address], str]:
    return [], "unknown"


def udp_attempt(udp: Any, session_id: bytes, initiator: bool, local: Candidates,
                remote: Candidates) -> Any:
    return None
