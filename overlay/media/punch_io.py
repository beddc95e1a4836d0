"""Hole punching on a :class:`~overlay.media.media_socket.MediaSocket` (asyncio): drives the
sans-IO :class:`~overlay.media.punch.Puncher` of one session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from overlay.core.addresses import Address
from overlay.media.media_socket import MediaSocket
from overlay.media.punch import DEFAULT_TIMEOUT_S, LINGER_S, Puncher, PunchFailed


async def punch(
    media: MediaSocket, session_id: bytes, key: bytes, initiator: bool,
    local_candidates: Sequence[Address], remote_candidates: Sequence[Address],
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Address:
    """Punch a hole to the peer; its address (as our socket sees it) or :class:`PunchFailed`
    within ``timeout``.

    ``key`` is :func:`punch_key` of the session; ``initiator`` is True on the invite's sender
    and False on the other side (they must differ). The session keeps answering the peer's
    probes for ``LINGER_S`` afterwards, and the addresses it verified stay available to
    :func:`overlay.media.quic.connect.quic_connect` through ``media.puncher(session_id)``."""
    puncher = Puncher(session_id, key, local_candidates, remote_candidates,
                      initiator=initiator, now=time.monotonic(), timeout=timeout)
    changed = media.add_puncher(puncher)
    try:
        await drive(puncher, media, changed)
        if puncher.state == "succeeded":
            assert puncher.selected is not None
            media.remove_puncher(session_id, after=LINGER_S)
            return puncher.selected
    except BaseException:
        media.remove_puncher(session_id)
        raise
    media.remove_puncher(session_id)
    elapsed = time.monotonic() - puncher.started
    tried = ", ".join(f"{h}:{p}" for h, p in puncher.targets) or "no candidates"
    raise PunchFailed(f"no answer from the peer in {elapsed:.1f}s "
                      f"({puncher.probes_sent} probes to {tried})")


async def drive(puncher: Puncher, media: MediaSocket, changed: asyncio.Event,
                also_send: Callable[[float], None] | None = None) -> None:
    """Run ``puncher`` until it is no longer punching: fire its timer, send what it has for
    the media socket (and, through ``also_send``, for any other socket), then wait for a
    probe (``changed``, from :meth:`MediaSocket.add_puncher`) or its next timer."""
    loop = asyncio.get_running_loop()
    while True:
        now = time.monotonic()
        puncher.handle_timer(now)
        for data, addr in puncher.datagrams_to_send(now):
            media.sendto(data, addr)
        if also_send is not None:
            also_send(now)
        if puncher.state != "punching":
            return
        due = puncher.get_timer()
        changed.clear()
        timer = loop.call_later(max(0.0, (due or now) - now), changed.set)
        try:
            await changed.wait()
        finally:
            timer.cancel()
