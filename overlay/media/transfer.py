"""Sending a file over an established, end-to-end secured media stream.

Frames on the (decrypted) stream: ``length(4) | type(1) | payload``. The sender sends a
``HEADER`` (name, size, sha256, offset), ``DATA`` chunks and ``END``; the receiver writes into
a partial file in its inbox, checks size and sha256, renames it into place and answers ``ACK``
(ok, sha256, or an error). A receiver never writes outside its inbox, never past the announced
size, and never keeps a file whose hash does not match.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from overlay.media.stream import ByteStream

HEADER, DATA, END, ACK = 1, 2, 3, 4
CHUNK = 60 * 1024
MAX_FRAME = CHUNK + 64
MAX_FILE_BYTES = 64 * 2**30
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,200}$")


class TransferError(Exception):
    """The transfer failed; the message says why (and which side)."""


@dataclass
class TransferResult:
    name: str
    bytes: int
    sha256: str
    seconds: float
    first_byte_at: float | None = None
    path: str = ""


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
                raise TransferError("the peer closed the stream mid-transfer")
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
    stream: ByteStream, path: Path, progress: Callable[[int, int], None] | None = None
) -> TransferResult:
    size = path.stat().st_size  # noqa: ASYNC240 - one stat, not worth a thread
    sha = await asyncio.to_thread(file_sha256, path)
    started = time.monotonic()
    header = {"name": path.name, "size": size, "sha256": sha, "offset": 0}
    await stream.send(frame(HEADER, msgpack.packb(header)))
    sent = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            await stream.send(frame(DATA, chunk))
            sent += len(chunk)
            if progress is not None:
                progress(sent, size)
    await stream.send(frame(END, b""))
    kind, payload = await FrameReader(stream).next()
    if kind != ACK:
        raise TransferError("the receiver did not acknowledge")
    ack = msgpack.unpackb(payload, raw=False, max_map_len=8, max_str_len=512)
    if not isinstance(ack, dict) or ack.get("ok") is not True:
        error = ack.get("error") if isinstance(ack, dict) else None
        raise TransferError(f"the receiver refused the file: {error}")
    if ack.get("sha256") != sha:
        raise TransferError("the receiver stored a different sha256")
    return TransferResult(path.name, size, sha, time.monotonic() - started, path=stream.path)


def _final_name(inbox: Path, name: str) -> Path:
    target = inbox / name
    stem, suffix = os.path.splitext(name)
    n = 1
    while target.exists():
        target = inbox / f"{stem} ({n}){suffix}"
        n += 1
    return target


async def receive_file(
    stream: ByteStream, inbox: Path, max_bytes: int = MAX_FILE_BYTES
) -> TransferResult:
    reader = FrameReader(stream)
    kind, payload = await reader.next()
    if kind != HEADER:
        raise TransferError("a transfer starts with a header")
    header = msgpack.unpackb(payload, raw=False, max_map_len=8, max_str_len=512)
    name, size, sha = (header.get(k) for k in ("name", "size", "sha256")) \
        if isinstance(header, dict) else (None, None, None)
    error = None
    if not isinstance(name, str) or not SAFE_NAME.match(name) or name in (".", ".."):
        error = "unsafe file name"
    elif type(size) is not int or not 0 <= size <= max_bytes:
        error = f"size must be 0..{max_bytes}"
    elif not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        error = "bad sha256"
    if error is not None:
        await stream.send(frame(ACK, msgpack.packb({"ok": False, "error": error})))
        raise TransferError(f"refused an incoming file: {error}")
    assert isinstance(name, str) and isinstance(size, int) and isinstance(sha, str)
    inbox.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per transfer
    partial = inbox / f".{name}.{os.urandom(4).hex()}.partial"
    digest = hashlib.sha256()
    received = 0
    first_byte_at: float | None = None
    started = time.monotonic()
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            while True:
                kind, payload = await reader.next()
                if kind == DATA:
                    if first_byte_at is None:
                        first_byte_at = time.time()
                    received += len(payload)
                    if received > size:
                        raise TransferError("the sender sent more than it announced")
                    digest.update(payload)
                    out.write(payload)
                elif kind == END:
                    break
                else:
                    raise TransferError(f"unexpected frame type {kind}")
        if received != size or digest.hexdigest() != sha:
            raise TransferError("size or sha256 mismatch")
        target = _final_name(inbox, name)
        os.replace(partial, target)
    except TransferError as exc:
        partial.unlink(missing_ok=True)
        await stream.send(frame(ACK, msgpack.packb({"ok": False, "error": str(exc)})))
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    await stream.send(frame(ACK, msgpack.packb({"ok": True, "sha256": sha})))
    return TransferResult(target.name, size, sha, time.monotonic() - started, first_byte_at,
                          path=stream.path)
