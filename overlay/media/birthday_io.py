"""Birthday punching (asyncio): drives the sans-IO
:class:`~overlay.media.birthday.BirthdayPuncher` of one session on the client's
:class:`~overlay.media.media_socket.MediaSocket` and, on the hard side, on up to 256 extra UDP
sockets; then QUIC on the socket that won. The extra sockets that did not win are closed as
soon as punching ends (won, failed or cancelled); the winner is closed with the stream."""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import time
from collections.abc import Callable, Sequence

from overlay.core.addresses import Address
from overlay.core.logs import get_logger
from overlay.media.birthday import (
    BIRTHDAY_TIMEOUT_S,
    EASY_PROBES,
    HARD_SOCKETS,
    BirthdayPuncher,
    Role,
)
from overlay.media.media_socket import MediaSocket
from overlay.media.punch import LINGER_S, PROBE_BYTES, PunchFailed, punch_key
from overlay.media.punch_io import drive
from overlay.media.quic.connect import CONNECT_TIMEOUT_S, quic_connect
from overlay.media.quic.stream import OwningQuicStream
from overlay.media.stream import MediaStream

log = get_logger(__name__)

#: datagrams read from one extra socket per wake-up, at most; larger ones are cut (and dropped)
READ_BURST = 16
READ_MAX_BYTES = 2048
#: extra sockets open at once in this process (all sessions), at most: two sessions' worth,
#: and never more than a quarter of the file descriptor limit (the daemon needs the rest)
MAX_EXTRA_TOTAL = 2 * HARD_SOCKETS


def extra_socket_allowance() -> int:
    """How many more extra sockets this process may open now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = MAX_EXTRA_TOTAL if soft == resource.RLIM_INFINITY else min(MAX_EXTRA_TOTAL,
                                                                        soft // 4)
    return max(0, limit - ExtraSockets.in_use)


class ExtraSockets:
    """The hard side's extra UDP sockets: plain non-blocking sockets (one asyncio reader
    each), numbered from 1. Opens as many as it can, up to ``count`` and the process's
    allowance (:func:`extra_socket_allowance`)."""

    #: extra sockets open in this process
    in_use = 0

    def __init__(self, count: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.socks: dict[int, socket.socket] = {}
        self.opened = 0
        for index in range(1, min(count, extra_socket_allowance()) + 1):
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            except OSError:  # out of file descriptors: punch with fewer
                break
            try:
                sock.setblocking(False)
                sock.bind(("0.0.0.0", 0))
            except OSError:
                sock.close()
                break
            self.socks[index] = sock
            self.opened = index
            ExtraSockets.in_use += 1
        self._reading: set[int] = set()

    def __len__(self) -> int:
        return self.opened

    def start_reading(self, on_probe: Callable[[int, bytes, Address], None]) -> None:
        """Hand every probe-sized datagram an extra socket receives to ``on_probe``."""
        for index, sock in self.socks.items():
            self.loop.add_reader(sock.fileno(), self._readable, index, sock, on_probe)
            self._reading.add(index)

    @staticmethod
    def _readable(index: int, sock: socket.socket,
                  on_probe: Callable[[int, bytes, Address], None]) -> None:
        for _ in range(READ_BURST):
            try:
                data, addr = sock.recvfrom(READ_MAX_BYTES)
            except OSError:  # drained (BlockingIOError), or an ICMP error reported
                return
            if len(data) == PROBE_BYTES:
                on_probe(index, data, (str(addr[0]), int(addr[1])))

    def sendto(self, index: int, data: bytes, addr: Address) -> None:
        sock = self.socks.get(index)
        if sock is None:
            return
        with contextlib.suppress(OSError):  # a full buffer loses a probe, as the wire may
            sock.sendto(data, addr)

    def _stop_reading(self, index: int) -> None:
        if index in self._reading:
            self._reading.discard(index)
            self.loop.remove_reader(self.socks[index].fileno())

    def take(self, index: int) -> socket.socket:
        """Socket ``index``, no longer read or owned here (the caller closes it)."""
        self._stop_reading(index)
        ExtraSockets.in_use -= 1
        return self.socks.pop(index)

    def close(self) -> None:
        for index in list(self.socks):
            self._stop_reading(index)
            self.socks.pop(index).close()
            ExtraSockets.in_use -= 1


async def _run(puncher: BirthdayPuncher, media: MediaSocket, extra: ExtraSockets) -> None:
    """Punch until the puncher succeeded or failed."""
    changed = media.add_puncher(puncher)

    def flush_extra(now: float) -> None:
        for index, data, addr in puncher.extra_datagrams_to_send(now):
            extra.sendto(index, data, addr)

    def on_probe(index: int, data: bytes, addr: Address) -> None:
        now = time.monotonic()
        puncher.receive_on(index, data, addr, now)
        flush_extra(now)
        changed.set()

    extra.start_reading(on_probe)
    await drive(puncher, media, changed, flush_extra)


async def birthday_path(
    media: MediaSocket, session_id: bytes, shared_secret: bytes, transcript_hash: bytes,
    initiator: bool, local_candidates: Sequence[Address], remote_candidates: Sequence[Address],
    role: Role, *, sockets: int = HARD_SOCKETS, probes: int = EASY_PROBES,
    timeout: float = BIRTHDAY_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S,
    rng: random.Random | None = None,
) -> MediaStream:
    """Birthday-punch as ``role``, then QUIC on the socket that won: the raw ``"udp-punch"``
    stream of one session (still to be secured), or :class:`PunchFailed` within ``timeout``.
    Logs one ``birthday_punch`` line (probes sent, sockets used, time taken, outcome)."""
    started = time.monotonic()
    extra = ExtraSockets(sockets if role == "hard" else 0)
    puncher: BirthdayPuncher | None = None
    outcome = "cancelled"
    won: socket.socket | None = None
    try:
        puncher = BirthdayPuncher(session_id, punch_key(shared_secret, transcript_hash),
                                  local_candidates, remote_candidates, initiator=initiator,
                                  now=started, role=role, sockets=len(extra),
                                  probes=probes, timeout=timeout, rng=rng)
        try:
            await _run(puncher, media, extra)
        except BaseException:
            media.remove_puncher(session_id)
            raise
        outcome = puncher.state
        if puncher.state != "succeeded" or puncher.selected is None:
            media.remove_puncher(session_id)
            raise PunchFailed(f"birthday punching ({role}): no answer from the peer in "
                              f"{time.monotonic() - started:.1f}s ({puncher.probes_sent} "
                              f"probes, {len(extra)} extra sockets)")
        if puncher.winner:
            media.remove_puncher(session_id)
            won = extra.take(puncher.winner)
        else:
            media.remove_puncher(session_id, after=LINGER_S)
    finally:
        extra.close()
        if puncher is not None:
            log.info("birthday_punch", session=session_id.hex(), role=role, outcome=outcome,
                     probes=puncher.probes_sent, spray=puncher.spray_sent,
                     sockets=len(extra), winner=puncher.winner,
                     seconds=round(time.monotonic() - started, 3),
                     rejected=dict(puncher.rejected))
    peer = puncher.selected
    if won is None:  # the media socket won (simple punching got through)
        return await quic_connect(media, peer, initiator=initiator, timeout=connect_timeout,
                                  session_id=session_id)
    try:
        own = await MediaSocket.adopt(won)
    except BaseException:
        won.close()
        raise
    # keep answering the peer's probes on the winner for a while (its ack may have been lost)
    own.add_puncher(puncher)
    own.remove_puncher(session_id, after=LINGER_S)
    try:
        stream = await quic_connect(own, peer, initiator=initiator, timeout=connect_timeout,
                                    session_id=session_id)
    except BaseException:
        await own.close()
        raise
    return OwningQuicStream(stream, own.close, path=stream.path)
