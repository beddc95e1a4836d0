"""Sending a file over an established, end-to-end secured media stream.

Frames on the (decrypted) stream: ``length(4) | type(1) | payload``. The sender sends a
``HEADER`` (name, size, sha256, transfer id); the receiver answers ``READY`` with the offset it
already holds (0 for a new transfer; for one resumed after its path failed, every byte it wrote
before); the sender sends ``DATA`` from there and ``END``; the receiver checks size and
sha256, renames the partial file into place and answers ``ACK``. No byte is lost or written
twice across a path failure. A receiver never writes outside its inbox, never past the
announced size, never past its inbox quota or the disk's free space (:mod:`.inbox_limits`,
checked before ``READY``), and never keeps a file whose hash does not match. Frame payloads
are msgpack maps decoded by :func:`overlay.core.strict_msgpack.unpack_strict`; anything
malformed is a :class:`TransferError` (the receiver answers it with a refusing ``ACK``), and
``.partial`` files of interrupted transfers are removed by :meth:`PartialStore.expire`, which
the media service calls on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from overlay.core.strict_msgpack import NotMsgpack, unpack_strict
from overlay.core.text import printable
from overlay.media.errors import MediaError, PathLost
from overlay.media.inbox_limits import InboxFull, InboxGuard
from overlay.media.stream import ByteStream

HEADER, DATA, END, ACK, READY = 1, 2, 3, 4, 5
#: how long a receiver keeps an interrupted transfer for the sender to resume
RESUME_WINDOW_S = 120.0
CHUNK = 60 * 1024
#: the first DATA frame of a send's first attempt, sent before READY: small, so that it is
#: through at once even on a relay session capped at 1 Mbit/s (a whole CHUNK takes ~0.5 s)
FIRST_DATA_BYTES = 4096
MAX_FRAME = CHUNK + 64
MAX_FILE_BYTES = 64 * 2**30
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,200}\Z")
#: the longest string a control frame (HEADER, READY, ACK) may carry
MAX_FIELD_CHARS = 512
#: how often the media service runs :meth:`PartialStore.expire`, at most
EXPIRE_TICK_S = 15.0


class TransferError(MediaError):
    """The transfer failed; the message says why (and which side)."""


class StreamClosed(TransferError, PathLost):
    """The path under the transfer went away: resumable on another path.

    It is one way a path dies under a transfer (:class:`~overlay.media.errors.PathLost`); the
    others are the socket failing and the secured stream breaking (ending without its CLOSE
    frame when a relay cut it off, or failing to authenticate). Each is met the same way: the
    transfer resumes on another path."""


class TransferInterrupted(TransferError):
    """The receiver's path failed (or was left) mid-transfer; it keeps the partial file for the
    sender to resume, on this path's successor or in a new session. ``first_byte_at``: when
    the first data byte came on this path (None: none did)."""

    def __init__(self, message: str, first_byte_at: float | None = None) -> None:
        super().__init__(message)
        self.first_byte_at = first_byte_at


@dataclass
class TransferResult:
    name: str
    bytes: int
    sha256: str
    seconds: float
    first_byte_at: float | None = None
    path: str = ""
    resumed_from: int = 0


@dataclass
class Partial:
    """An interrupted incoming transfer, kept so the sender can resume it."""

    path: Path
    name: str
    size: int
    sha256: str
    received: int
    digest: Any
    updated: float


class PartialStore:
    """Interrupted incoming transfers by (sender, transfer id), dropped (the ``.partial``
    file removed) ``RESUME_WINDOW_S`` after their last byte: :meth:`expire` runs on every
    resume and on the media service's timer (:func:`expire_interval`)."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Partial] = {}

    def take(self, sender: str, transfer_id: str, name: str, size: int, sha: str
             ) -> Partial | None:
        self.expire()
        item = self.items.pop((sender, transfer_id), None)
        if item is None or (item.name, item.size, item.sha256) != (name, size, sha):
            if item is not None:
                item.path.unlink(missing_ok=True)
            return None
        return item

    def keep(self, sender: str, transfer_id: str, item: Partial) -> None:
        item.updated = time.monotonic()
        self.items[(sender, transfer_id)] = item

    def expire(self) -> None:
        now = time.monotonic()
        for key, item in list(self.items.items()):
            if now - item.updated > RESUME_WINDOW_S:
                item.path.unlink(missing_ok=True)
                del self.items[key]


def expire_interval() -> float:
    """How often to run :meth:`PartialStore.expire` so a partial outlives its window by at
    most a quarter of it."""
    return min(EXPIRE_TICK_S, RESUME_WINDOW_S / 4)


def decode_control(payload: bytes, what: str) -> dict[str, Any]:
    """A HEADER, READY or ACK payload: a msgpack map with str keys and short values, else
    :class:`TransferError` (never a decoder's own exception)."""
    try:
        value = unpack_strict(payload, max_len=MAX_FIELD_CHARS, max_array=0, max_map=8)
    except NotMsgpack as exc:
        raise TransferError(f"malformed {what}: {exc}") from None
    if not isinstance(value, dict):
        raise TransferError(f"malformed {what}: not a map")
    return value


def _refusal(ack: dict[str, Any]) -> str:
    error = ack.get("error")
    return printable(error) if isinstance(error, str) else "no reason given"


class FrameReader:
    """Reassembles frames from a ByteStream's arbitrary chunks."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def next(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack(">I", self.buf[:4])
                if length > MAX_FRAME or length < 1:
                    raise TransferError(f"frame of {length} bytes refused")
                if len(self.buf) >= 4 + length:
                    kind = self.buf[4]
                    payload = bytes(self.buf[5 : 4 + length])
                    del self.buf[: 4 + length]
                    return kind, payload
            data = await self.stream.recv(65536)
            if not data:
                raise StreamClosed("the peer closed the stream mid-transfer")
            self.buf += data


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def send_file(
    stream: ByteStream, path: Path, progress: Callable[[int, int], None] | None = None,
    transfer_id: bytes | None = None, sha: str | None = None, *, first_attempt: bool = False,
) -> TransferResult:
    """Send ``path``; with the ``transfer_id`` of an interrupted attempt, resume it.

    ``first_attempt``: no earlier attempt sent any of this transfer (the receiver cannot
    hold a part of it), so a first, small DATA frame (:data:`FIRST_DATA_BYTES`) goes right
    behind the HEADER instead of waiting a round trip for READY (offset 0); the receiver
    reads it only after its checks and READY, and a refusal discards it."""
    size = path.stat().st_size  # noqa: ASYNC240 - one stat, not worth a thread
    sha = sha or await asyncio.to_thread(file_sha256, path)
    started = time.monotonic()
    header = {"name": path.name, "size": size, "sha256": sha,
              "id": (transfer_id or os.urandom(16)).hex()}
    await stream.send(frame(HEADER, msgpack.packb(header)))
    early = b""
    if first_attempt:
        with path.open("rb") as f:
            early = f.read(FIRST_DATA_BYTES)
        if early:
            await stream.send(frame(DATA, early))
    reader = FrameReader(stream)
    kind, payload = await reader.next()
    if kind == ACK:
        raise TransferError(
            f"the receiver refused the transfer: {_refusal(decode_control(payload, 'ACK'))}")
    ready = decode_control(payload, "READY") if kind == READY else None
    if not isinstance(ready, dict) or type(ready.get("offset")) is not int \
            or not 0 <= ready["offset"] <= size:
        raise TransferError("the receiver refused the transfer: no valid READY")
    offset: int = ready["offset"]
    if early and offset != 0:
        raise TransferError("the receiver claims part of a transfer never sent before")
    sent = offset + len(early)
    if early and progress is not None:
        progress(sent, size)
    with path.open("rb") as f:
        f.seek(sent)
        while chunk := f.read(CHUNK):
            await stream.send(frame(DATA, chunk))
            sent += len(chunk)
            if progress is not None:
                progress(sent, size)
    await stream.send(frame(END, b""))
    kind, payload = await reader.next()
    if kind != ACK:
        raise TransferError("the receiver did not acknowledge")
    ack = decode_control(payload, "ACK")
    if ack.get("ok") is not True:
        raise TransferError(f"the receiver refused the file: {_refusal(ack)}")
    if ack.get("sha256") != sha:
        raise TransferError("the receiver stored a different sha256")
    assert sha is not None
    return TransferResult(path.name, size, sha, time.monotonic() - started, path=stream.path,
                          resumed_from=offset)


def _final_name(inbox: Path, name: str) -> Path:
    target = inbox / name
    stem, suffix = os.path.splitext(name)
    n = 1
    while target.exists():
        target = inbox / f"{stem} ({n}){suffix}"
        n += 1
    return target


async def receive_file(
    stream: ByteStream, inbox: Path, max_bytes: int = MAX_FILE_BYTES,
    partials: PartialStore | None = None, sender: str = "", guard: InboxGuard | None = None,
    stop: asyncio.Event | None = None,
) -> TransferResult:
    """Receive one file into ``inbox``. ``guard`` holds the inbox limits and the other
    transfers in progress (default: the default limits, this transfer alone). ``stop``: when
    it is set before ``END`` arrived, stop reading this stream at a frame boundary, as if it
    had failed (the partial file is kept for a resume on another path)."""
    guard = guard or InboxGuard()
    reader = FrameReader(stream)
    kind, payload = await reader.next()
    if kind != HEADER:
        raise TransferError("a transfer starts with a header")
    try:
        header = decode_control(payload, "HEADER")
    except TransferError as exc:
        await _refuse_before_ready(stream, str(exc))
        raise TransferError(f"refused an incoming file: {exc}") from None
    name, size, sha, tid = (header.get(k) for k in ("name", "size", "sha256", "id"))
    error = None
    if not isinstance(name, str) or not SAFE_NAME.match(name) or name in (".", ".."):
        error = "unsafe file name"
    elif type(size) is not int or not 0 <= size <= max_bytes:
        error = f"size must be 0..{max_bytes}"
    elif not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        error = "bad sha256"
    elif not isinstance(tid, str) or not re.fullmatch(r"[0-9a-f]{32}", tid):
        error = "bad transfer id"
    if error is not None:
        await _refuse_before_ready(stream, error)
        raise TransferError(f"refused an incoming file: {error}")
    assert isinstance(name, str) and isinstance(size, int) and isinstance(sha, str)
    assert isinstance(tid, str)
    inbox.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per transfer
    item = partials.take(sender, tid, name, size, sha) if partials is not None else None
    fresh = item is None
    partial = item.path if item is not None else \
        inbox / f".{name}.{os.urandom(4).hex()}.partial"
    try:
        with guard.admit(inbox, partial, size, item.received if item is not None else 0):
            if item is None:
                try:
                    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except OSError as exc:
                    raise InboxFull(f"the receiver cannot create the file: {exc.strerror}") \
                        from None
                item = Partial(partial, name, size, sha, 0, hashlib.sha256(),
                               time.monotonic())
            return await _receive_body(stream, reader, inbox, item, tid, partials, sender,
                                       stop)
    except InboxFull as exc:
        if not fresh and item is not None:
            item.path.unlink(missing_ok=True)
        await _refuse_before_ready(stream, str(exc))
        raise TransferError(f"refused an incoming file: {exc}") from None


#: what a receiver still reads after refusing a transfer before READY: the first DATA frame a
#: sender may have sent behind its HEADER (``send_file(first_attempt=True)``), so that
#: closing with it unread does not reset the connection before the refusal is read
REFUSAL_DRAIN_BYTES = 2 * MAX_FRAME
REFUSAL_DRAIN_S = 1.0


async def _refuse_before_ready(stream: ByteStream, error: str) -> None:
    await _refuse(stream, error)
    drained = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REFUSAL_DRAIN_S):
            while drained < REFUSAL_DRAIN_BYTES:
                data = await stream.recv(65536)
                if not data:
                    break
                drained += len(data)


async def _refuse(stream: ByteStream, error: str) -> None:
    with contextlib.suppress(Exception):
        await stream.send(frame(ACK, msgpack.packb({"ok": False, "error": error})))


async def _receive_body(
    stream: ByteStream, reader: FrameReader, inbox: Path, item: Partial, tid: str,
    partials: PartialStore | None, sender: str, stop: asyncio.Event | None = None,
) -> TransferResult:
    """READY, then DATA until END, then the checks and the ACK."""
    name, size, sha = item.name, item.size, item.sha256
    resumed_from = item.received
    first_byte_at: float | None = None
    started = time.monotonic()
    try:
        await stream.send(frame(READY, msgpack.packb({"offset": item.received})))
        with item.path.open("r+b") as out:
            out.truncate(item.received)
            out.seek(item.received)
            while True:
                try:
                    kind, payload = await _next_unless(reader, stop)
                except PathLost as exc:
                    raise _Interrupted(str(exc)) from None
                if kind == DATA:
                    if first_byte_at is None:
                        first_byte_at = time.time()
                    if item.received + len(payload) > size:
                        raise TransferError("the sender sent more than it announced")
                    out.write(payload)
                    item.digest.update(payload)
                    item.received += len(payload)
                elif kind == END:
                    break
                else:
                    raise TransferError(f"unexpected frame type {kind}")
        if item.received != size or item.digest.hexdigest() != sha:
            raise TransferError("size or sha256 mismatch")
        target = _final_name(inbox, name)
        os.replace(item.path, target)
    except _Interrupted as exc:
        if partials is not None:
            partials.keep(sender, tid, item)
        else:
            item.path.unlink(missing_ok=True)
        raise TransferInterrupted(
            f"interrupted at {item.received} of {size} bytes: {exc}", first_byte_at) from None
    except TransferError as exc:
        item.path.unlink(missing_ok=True)
        await _refuse(stream, str(exc))
        raise
    except OSError as exc:  # the disk (full, say), not the path: PathLost is handled above
        if isinstance(exc, PathLost):
            item.path.unlink(missing_ok=True)
            raise
        item.path.unlink(missing_ok=True)
        await _refuse(stream, "the receiver could not write the file")
        raise TransferError(f"could not write {name}: {exc}") from None
    except BaseException:
        item.path.unlink(missing_ok=True)
        raise
    await stream.send(frame(ACK, msgpack.packb({"ok": True, "sha256": sha})))
    return TransferResult(target.name, size, sha, time.monotonic() - started, first_byte_at,
                          path=stream.path, resumed_from=resumed_from)


async def _next_unless(reader: FrameReader, stop: asyncio.Event | None) -> tuple[int, bytes]:
    """The next frame, or :class:`PathLost` once ``stop`` is set (a frame read halfway is
    dropped with the stream)."""
    if stop is None:
        return await reader.next()
    if stop.is_set():
        raise PathLost("moving to another path")
    reading = asyncio.ensure_future(reader.next())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not reading.done():
            reading.cancel()
    if reading.done() and not reading.cancelled():
        return reading.result()
    raise PathLost("moving to another path")


class _Interrupted(MediaError):
    """The path failed mid-transfer; the partial file is kept for a resume."""
