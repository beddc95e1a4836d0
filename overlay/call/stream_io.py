"""A call over a byte stream, the asyncio side: the call core
(:class:`~overlay.call.session.CallSession`) driven by its timer, its frames length-prefixed
(:mod:`overlay.call.stream_frames`) on any ordered reliable stream (direct TCP, QUIC over a
punched UDP path, a relay over TCP), already end-to-end encrypted by the media path.

Where the path can carry datagrams beside its stream (QUIC DATAGRAM frames, RFC 9221, on a
punched UDP path: :class:`DatagramCarrier`), every frame goes as one datagram instead (the
frames are end-to-end encrypted by the call's own keys) and the QUIC connection drops what
it cannot send now; frames arriving either way are taken.

On the stream, a frame never waits: the timer hands each one to a writer task through a
queue, and
:class:`~overlay.call.stream_frames.SendGate` drops it (a sender-side drop, a lost frame to
the receiver's jitter buffer) while the unsent backlog -- the queue plus what the transport
below has not written -- is over three frames.

A call moves (:meth:`StreamCall.switch`): it sends on the new path from then on and takes
frames from every path it was on. A call on a TCP stream can also have mirrors
(:meth:`StreamCall.add_mirror`: a relay path made so by ``MIRROR``,
:mod:`overlay.media.selection`): each frame goes on the path in use and on every mirror,
each with its own backlog gate, and the receiver takes the first copy (the replay filter
drops the other). One lost segment on TCP holds every later frame back for a round trip or
more; two TCP connections seldom stall at once, so the copies keep the frames on time (the
jitter buffer of a call on a stream keeps :data:`STREAM_MIN_TARGET_MS`, so the mirror's copy,
a relay hop slower, is in time when the stream stalls). Until its first mirror is up (about
0.4 s into a call; at most :data:`STREAM_START_S`), a call that awaits one (``awaits_mirror``)
keeps :data:`STREAM_START_TARGET_MS` instead: a stall then has no copy to cover it. When the
path in use fails, a mirror becomes it at once (no SELECT: both sides already send on it),
unless the peer closed a mirror cleanly first: then the failure is its hang-up. Only the path
in use ending cleanly ends the call (the peer hung up); one failing sets
:attr:`StreamCall.path_lost`, and the call waits up to its ``lost_grace_s``
(:data:`LOST_GRACE_S` where the client can move it to a spare relay or a direct path; else
0: it ends) for a switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

from overlay.call.errors import BadFrame
from overlay.call.frames import MIN_DATAGRAM_BYTES
from overlay.call.jitter import MAX_TARGET_MS, MIN_TARGET_MS
from overlay.call.session import CallSession, CallStats
from overlay.call.stream_frames import SendGate, StreamFrameDecoder, encode_stream_frame

#: bytes asked of the stream per read
READ_BYTES = 16 * 1024
#: the jitter buffer's least target on a stream: a mirror's copy (a relay's extra hop)
#: comes a few tens of ms after the stream's, and must be in time when the stream stalls
STREAM_MIN_TARGET_MS = 60.0
#: the jitter buffer's least target on a stream until the call's first mirror is up (a stall
#: then has no copy to cover it), for at most STREAM_START_S
STREAM_START_TARGET_MS = MAX_TARGET_MS
STREAM_START_S = 2.0
#: how long a call whose path failed waits for another path before it ends
LOST_GRACE_S = 5.0


class FrameStream(Protocol):
    """What a call needs of a path: ordered reliable bytes (a media ByteStream)."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, max_bytes: int = 65536) -> bytes: ...


class DatagramCarrier(Protocol):
    """A path that also carries unreliable datagrams (the QUIC stream of a punched path)."""

    datagram_handler: Callable[[bytes], None] | None

    def datagrams_supported(self) -> bool: ...

    def send_datagram(self, data: bytes) -> bool: ...


def datagram_carrier(stream: object) -> DatagramCarrier | None:
    """The stream under ``stream`` (through any ``raw`` wrappers) that carries datagrams to
    the peer now, if there is one."""
    for _ in range(8):
        if stream is None:
            return None
        supported = getattr(stream, "datagrams_supported", None)
        if callable(supported) and hasattr(stream, "send_datagram") and supported():
            return stream  # type: ignore[return-value]
        stream = getattr(stream, "raw", None)
    return None


def transport_backlog(stream: object) -> int:
    """Bytes the transport under ``stream`` (through any ``raw`` wrappers) has not written
    yet, where it says (an asyncio transport's write buffer); 0 where it does not."""
    seen = 0
    while stream is not None and seen < 8:
        for holder in (stream, getattr(stream, "writer", None)):
            transport = getattr(holder, "transport", None)
            size = getattr(transport, "get_write_buffer_size", None)
            if callable(size):
                with contextlib.suppress(Exception):
                    return int(size())
        stream = getattr(stream, "raw", None)
        seen += 1
    return 0


class _FrameSender:
    """One path's sender of a call's stream frames: its queue, backlog gate and writer task
    (:meth:`start`). A mirror's sender stops at its first failed write (``failed``); the
    call's own (``on_lost`` given) tells ``on_lost`` and writes on, to the stream it holds by
    then (the call may have switched to another)."""

    def __init__(self, stream: FrameStream, frame_bytes: int,
                 on_lost: Callable[[BaseException], None] | None = None) -> None:
        self.stream = stream
        self.gate = SendGate(frame_bytes)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.queued_bytes = 0
        self.failed = False
        #: the peer ended this path cleanly (it hangs up on every path of the call)
        self.ended = False
        self._on_lost = on_lost
        self.writer: asyncio.Future[None] | None = None

    def start(self) -> asyncio.Future[None]:
        self.writer = asyncio.ensure_future(self._write())
        return self.writer

    def offer(self, wire: bytes) -> bool:
        if self.failed or not self.gate.admit(self.queued_bytes
                                              + transport_backlog(self.stream)):
            return False
        self.queued_bytes += len(wire)
        self.queue.put_nowait(wire)
        return True

    async def _write(self) -> None:
        while True:
            wire = await self.queue.get()
            stream = self.stream
            try:
                await stream.send(wire)
            except (ConnectionError, OSError) as exc:  # dropped: the call may move
                if self._on_lost is None:
                    self.failed = True
                    return
                if stream is self.stream:
                    self._on_lost(exc)
            finally:
                self.queued_bytes -= len(wire)

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.cancel()


class StreamCall:
    """One call's frames on ``stream``: :meth:`run` sends for ``seconds`` (None: until the
    peer ends the stream), receiving all along."""

    def __init__(self, session: CallSession, stream: FrameStream,
                 lost_grace_s: float = 0.0, *, awaits_mirror: bool = False) -> None:
        self.session = session
        #: the frames on the path in use (its stream: :attr:`stream`)
        self._sender = _FrameSender(stream, session.size + MIN_DATAGRAM_BYTES, self._lost)
        #: how long the call waits for :meth:`switch` after its path failed (0: it ends)
        self.lost_grace_s = lost_grace_s
        self.carrier = datagram_carrier(stream)
        #: "datagram" (frames as QUIC DATAGRAM frames) or "stream"
        self.mode = "datagram" if self.carrier is not None else "stream"
        #: the buffer keeps the start target (a mirror is on its way, not up yet)
        self.starting = awaits_mirror and self.mode == "stream"
        if self.mode == "stream":
            session.buffer.min_target_ms = STREAM_START_TARGET_MS if self.starting \
                else STREAM_MIN_TARGET_MS
        #: frames that came on the stream (the rest came as datagrams)
        self.stream_frames = 0
        self.peer_ended = asyncio.Event()
        #: set when the path in use failed (cleared by :meth:`switch`)
        self.path_lost = asyncio.Event()
        #: why the path ended, when it did not end cleanly
        self.error: str | None = None
        self._readers: list[asyncio.Future[None]] = []
        #: paths that carry a copy of every frame (a call on a TCP stream)
        self.mirrors: list[_FrameSender] = []
        #: called with the mirror that became the path in use when the path in use failed
        self.promoted: Callable[[FrameStream], None] | None = None

    @property
    def stream(self) -> FrameStream:
        """The path in use."""
        return self._sender.stream

    @stream.setter
    def stream(self, stream: FrameStream) -> None:
        self._sender.stream = stream

    def offer(self, frame: bytes) -> None:
        """Send ``frame`` as a datagram, or queue it on the stream and on each mirror unless
        their backlogs say drop it (a sender-side drop only when no path took it)."""
        if self.carrier is not None:
            if not self.carrier.send_datagram(frame):
                self.session.sender_dropped()
            return
        wire = encode_stream_frame(frame)
        taken = self._sender.offer(wire)
        for mirror in self.mirrors:
            taken = mirror.offer(wire) or taken
        if not taken:
            self.session.sender_dropped()

    def add_mirror(self, stream: FrameStream) -> None:
        """Send a copy of every frame on ``stream`` too, and take the frames arriving on it."""
        mirror = _FrameSender(stream, self.session.size + MIN_DATAGRAM_BYTES)
        mirror.start()
        self.mirrors.append(mirror)
        self._started()
        self._readers.append(asyncio.ensure_future(self._read(stream)))

    def _started(self) -> None:
        """The start is over (a mirror is up, or it took too long): the stream's floor."""
        if self.starting:
            self.starting = False
            if self.mode == "stream":
                self.session.buffer.min_target_ms = STREAM_MIN_TARGET_MS

    def _lost(self, exc: BaseException) -> None:
        if any(m.ended for m in self.mirrors):  # the peer hung up (it ended a mirror first)
            self.peer_ended.set()
            return
        live = [m for m in self.mirrors if not m.failed]
        if live:  # a mirror is the path in use now: both sides already send on it
            mirror = live[0]
            self.mirrors.remove(mirror)
            mirror.stop()
            self.stream = mirror.stream
            if self.promoted is not None:
                self.promoted(mirror.stream)
            return
        self.error = str(exc) or type(exc).__name__
        self.path_lost.set()

    async def _read(self, stream: FrameStream) -> None:
        decoder = StreamFrameDecoder()
        try:
            while data := await stream.recv(READ_BYTES):
                now = time.monotonic()
                for frame in decoder.feed(data):
                    self.stream_frames += 1
                    self.session.datagram_received(frame, now)
        except BadFrame as exc:
            self._mirror_gone(stream, ended=False)
            if stream is self.stream:
                self.error = f"bad call frame: {exc}"
                self.peer_ended.set()
        except (ConnectionError, OSError) as exc:
            self._mirror_gone(stream, ended=False)
            if stream is self.stream:
                self._lost(exc)
        else:
            self._mirror_gone(stream, ended=True)
            if stream is self.stream:  # the peer ended the call on the path in use
                self.peer_ended.set()

    def _mirror_gone(self, stream: FrameStream, ended: bool) -> None:
        """A mirror's reader stopped: the path is no mirror to move to any more (``ended``:
        the peer closed it cleanly, so the path in use failing next means it hung up, the
        reset of a socket closed with frames unread, not a path lost)."""
        for mirror in self.mirrors:
            if mirror.stream is stream:
                mirror.failed = True
                mirror.ended = mirror.ended or ended

    def _take_datagrams(self) -> None:
        if self.carrier is not None:
            session = self.session

            def received(data: bytes) -> None:
                session.datagram_received(data, time.monotonic())
            self.carrier.datagram_handler = received

    def switch(self, stream: FrameStream) -> None:
        """Carry the call on ``stream`` from now on; frames still arriving on the old path
        are taken too."""
        self.stream = stream
        self.carrier = datagram_carrier(stream)
        self.mode = "datagram" if self.carrier is not None else "stream"
        self.starting = False
        self.session.buffer.min_target_ms = STREAM_MIN_TARGET_MS if self.mode == "stream" \
            else MIN_TARGET_MS
        if self.carrier is not None:  # datagrams do not stall: no more copies
            self._stop_mirrors()
        self._take_datagrams()
        self.path_lost.clear()
        self.error = None
        self._readers.append(asyncio.ensure_future(self._read(stream)))

    def _stop_mirrors(self) -> None:
        for mirror in self.mirrors:
            mirror.stop()
        self.mirrors.clear()

    async def run(self, seconds: float | None,
                  on_line: Callable[[CallStats], None] | None = None) -> CallStats:
        session = self.session
        self._take_datagrams()
        self._readers.append(asyncio.ensure_future(self._read(self.stream)))
        tasks: list[asyncio.Future[None]] = [self._sender.start()]
        start = time.monotonic()
        lost_at: float | None = None
        try:
            while (now := time.monotonic()) < start + (seconds or float("inf")):
                if self.peer_ended.is_set() or tasks[0].done():
                    break
                if self.starting and now - start >= STREAM_START_S:
                    self._started()
                lost_at = (lost_at or now) if self.path_lost.is_set() else None
                if lost_at is not None and now - lost_at >= self.lost_grace_s:
                    break  # no other path came
                for frame in session.timer(now):
                    self.offer(frame)
                line = session.stats_due(now)
                if line is not None and on_line is not None:
                    on_line(line)
                await asyncio.sleep(max(0.0, session.next_timer() - time.monotonic()))
            if tasks[0].done() and not tasks[0].cancelled() and tasks[0].exception():
                self.error = self.error or str(tasks[0].exception())
            return session.finish(time.monotonic())
        finally:
            if self.carrier is not None:
                self.carrier.datagram_handler = None
            tasks += self._readers + [m.writer for m in self.mirrors if m.writer is not None]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
