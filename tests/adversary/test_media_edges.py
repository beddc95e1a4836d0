"""Flaw 5, the receiver's edges, attacked by a peer that holds a path to the victim (its own
session keys) and sends what it likes on it, over real TCP on loopback:

- (c) the peer refuses a file with an ACK whose error string carries terminal escapes; the
  victim's real ``overlay send`` process prints it (through the real control socket and the
  real ``send_file``; only the daemon's lookup/signalling, which the string never touches,
  is left out): escaped, never obeyed;
- (d) HEADERs the inbox has no room for (default quota in bytes, in files; too little free
  disk space) are refused before READY, with the reason sent back; a ``.partial`` file left
  by a transfer the peer abandoned is removed by the media service's timer, with no other
  transfer arriving; a deeply nested msgpack HEADER gets a typed refusal (TransferError and
  a refusing ACK), not a decoder exception out of the handler; a stranger's signals stop at
  the inbox quota.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import msgpack
import pytest

from overlay.attach import SignalDelivery
from overlay.client.control import ControlServer
from overlay.client.control_commands import ClientCommands
from overlay.client.inbox import store_signal
from overlay.core.identity import Identity
from overlay.media import transfer
from overlay.media.consent import SendFailed
from overlay.media.service import MediaService
from overlay.media.session import MediaConfig
from overlay.media.stream import TcpByteStream
from overlay.media.transfer import (
    ACK,
    DATA,
    HEADER,
    READY,
    FrameReader,
    TransferError,
    frame,
    receive_file,
    send_file,
)
from tests.helpers.daemons import daemon_env, overlay_argv
from tests.helpers.media_attacker import Listener, refuse_with_escapes, secured_pair
from tests.helpers.netutil import loopback_ips, wait_for

GiB = 2**30


def header(size: int, name: str = "photo.jpg") -> bytes:
    return frame(HEADER, msgpack.packb({"name": name, "size": size, "sha256": "0" * 64,
                                        "id": os.urandom(16).hex()}))


def session() -> tuple[bytes, bytes]:
    return os.urandom(32), hashlib.blake2b(os.urandom(32), digest_size=32).digest()


async def attack(inbox: Path, first: bytes, **kwargs: Any) -> tuple[Any, tuple[int, bytes]]:
    """The attacker sends ``first`` on a secured path to the victim's ``receive_file``;
    returns what the victim's receive_file returned or raised, and the attacker's first
    answer (frame type, payload)."""
    async with secured_pair(loopback_ips(1)[0], *session()) as (mallory, victim):
        task = asyncio.ensure_future(receive_file(victim, inbox, sender="mallory", **kwargs))
        await mallory.send(first)
        reading = asyncio.ensure_future(FrameReader(mallory).next())
        await asyncio.wait([task, reading], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():  # the victim ended without a word: let the reader see it
            await victim.close()
        answer = (await asyncio.gather(asyncio.wait_for(reading, 5),
                                       return_exceptions=True))[0]
        await mallory.close()
        outcome = (await asyncio.gather(asyncio.wait_for(task, 10),
                                        return_exceptions=True))[0]
    return outcome, answer


def refusal(answer: Any) -> str:
    assert isinstance(answer, tuple), f"the receiver sent no answer: {answer!r}"
    kind, payload = answer
    assert kind == ACK, f"the receiver accepted the HEADER (frame type {kind}, {payload!r})"
    ack = msgpack.unpackb(payload)
    assert ack["ok"] is False
    return str(ack["error"])




# ---------------------------------------------------------------------- (c) escapes


class MediaToMallory:
    """The victim's media service from the control socket's point of view, sending over a
    direct path to mallory (``_send_once``'s error mapping)."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr

    async def send(self, user: object, path: Path, accept_wait_s: float = 0.0) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(*self.addr)
        stream = TcpByteStream(reader, writer)
        try:
            done = await send_file(stream, path)
        except TransferError as exc:
            raise SendFailed(f"transfer failed: {exc}") from None
        finally:
            await stream.close()
        return {"path": done.path, "bytes": done.bytes}


async def test_overlay_send_prints_a_peers_error_escaped(tmp_path) -> None:
    mallory = Listener()
    addr = await mallory.start(loopback_ips(1)[0])
    served: list[asyncio.Task[None]] = []

    async def serve() -> None:
        stream = await mallory.accepted.get()
        await refuse_with_escapes(stream)

    served.append(asyncio.ensure_future(serve()))
    control = ControlServer(tmp_path / "alice.sock")
    ClientCommands(dict, None, None, MediaToMallory(addr)).register(control)  # type: ignore[arg-type]
    await control.start()
    src = tmp_path / "report.txt"
    src.write_bytes(b"quarterly numbers\n" * 100)
    try:
        proc = await asyncio.create_subprocess_exec(
            *overlay_argv(["send", "mallory", str(src), "--control", str(control.path)],
                          log_json=False),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=daemon_env())
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await control.stop()
        await mallory.stop()
        for task in served:
            task.cancel()
    printed = out + err
    assert proc.returncode == 1, printed
    assert b"refused" in err, err
    for byte in (b"\x1b", b"\x07", b"\r", "\u202e".encode(), "\x9b".encode()):
        assert byte not in printed, f"overlay send printed the peer's raw {byte!r}: {err!r}"
    assert b"\\x1b]0;owned\\x07" in err, err


# ---------------------------------------------------------------------- (d) receiver edges


async def test_a_file_over_the_default_byte_quota_is_refused_before_ready(tmp_path) -> None:
    inbox = tmp_path / "inbox"
    outcome, answer = await attack(inbox, header(2 * GiB))
    reason = refusal(answer)
    assert "quota" in reason, reason
    assert isinstance(outcome, TransferError), outcome
    assert not any(inbox.glob("*partial")), list(inbox.iterdir())


async def test_the_default_file_count_quota_holds(tmp_path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(1000):
        (inbox / f"earlier-{i}.bin").write_bytes(b"")
    outcome, answer = await attack(inbox, header(10))
    assert "files" in refusal(answer)
    assert isinstance(outcome, TransferError), outcome
    assert len(list(inbox.iterdir())) == 1000


async def test_too_little_free_disk_space_is_refused_with_the_reason(
        tmp_path, monkeypatch) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    real = shutil.disk_usage(inbox)
    usage = namedtuple("usage", "total used free")

    def nearly_full(path: Any) -> Any:
        return usage(real.total, real.total - 100 * 2**20, 100 * 2**20)  # 100 MiB free

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    outcome, answer = await attack(inbox, header(80 * 2**20))  # fits the quota, not the disk
    reason = refusal(answer)
    assert "free disk space" in reason, reason
    assert isinstance(outcome, TransferError), outcome


async def test_the_sender_is_told_why(tmp_path) -> None:
    """The victim as a sender: a receiver's refusal reaches it with its reason."""
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    full = tmp_path / "full"
    full.mkdir()
    for i in range(1000):
        (full / f"f{i}").write_bytes(b"")
    async with secured_pair(loopback_ips(1)[0], *session()) as (alice, bob):
        results = await asyncio.gather(send_file(alice, src), receive_file(bob, full),
                                       return_exceptions=True)
    assert all(isinstance(r, TransferError) for r in results), results
    assert "inbox full" in str(results[0]), results[0]


async def test_an_abandoned_partial_expires_on_a_timer(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(transfer, "RESUME_WINDOW_S", 0.4)
    inbox = tmp_path / "inbox"
    service = MediaService(MediaConfig(Identity.generate(), "bob", "laptop", inbox),
                           None)  # type: ignore[arg-type]
    await service.start()
    try:
        async with secured_pair(loopback_ips(1)[0], *session()) as (mallory, victim):
            task = asyncio.ensure_future(receive_file(
                victim, inbox, partials=service.partials, sender="mallory"))
            await mallory.send(header(10 * 2**20, "big.iso"))
            assert (await FrameReader(mallory).next())[0] == READY
            await mallory.send(frame(DATA, b"\0" * 50_000))
            await wait_for(lambda: any(p.stat().st_size for p in inbox.glob(".*.partial")))
            await mallory.raw.close()  # gone, without a CLOSE frame: resumable for a while
            outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        assert isinstance(outcome, TransferError) and "interrupted" in str(outcome), outcome
        assert list(inbox.glob(".*.partial")), "the interrupted transfer was kept"
        # no other transfer arrives: the timer alone must remove it
        await wait_for(lambda: not list(inbox.glob(".*.partial")), timeout=5)
    finally:
        await service.stop()


async def test_a_deeply_nested_header_gets_a_typed_refusal(tmp_path) -> None:
    nested = b"\x81\xa4name" + b"\x91" * 60_000 + b"\xc0"
    outcome, answer = await attack(tmp_path / "inbox", frame(HEADER, nested))
    assert isinstance(outcome, TransferError), (
        f"{type(outcome).__name__} out of the receiver: {outcome}")
    assert "malformed" in refusal(answer)


async def test_a_strangers_signals_stop_at_the_inbox_quota(tmp_path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(999):
        (inbox / f"old-{i}.json").write_bytes(b"{}")
    stranger = Identity.generate()
    stored, refused = 0, 0
    started = time.monotonic()
    for _ in range(300):
        msg = SignalDelivery("mallory", "phone", stranger.public_key, os.urandom(4000))
        try:
            store_signal(inbox, msg)
            stored += 1
        except OSError:
            refused += 1
    assert (stored, refused) == (1, 299), (stored, refused)
    assert len(list(inbox.iterdir())) == 1000
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("bad_ready", [
    msgpack.packb([[[[[]]]]]), b"\x91" * 5000 + b"\xc0", b"\xc1", msgpack.packb({"offset": -1}),
])
async def test_the_sender_refuses_a_malformed_ready_cleanly(tmp_path, bad_ready) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"y" * 100)
    async with secured_pair(loopback_ips(1)[0], *session()) as (alice, mallory):
        task = asyncio.ensure_future(send_file(alice, src))
        assert (await FrameReader(mallory).next())[0] == HEADER
        await mallory.send(frame(READY, bad_ready))
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
    assert isinstance(outcome, TransferError), f"{type(outcome).__name__}: {outcome}"
