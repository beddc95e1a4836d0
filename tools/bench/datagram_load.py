"""The datagram relay benchmark's load generator: voice-sized datagrams from already bound
sockets, through a relay (ours or coturn) or straight to the peer, spread over 1-2 worker
processes, with the one-way delay of every datagram that arrives.

A call is two :class:`Leg`\\ s; each sends one ``FRAME``-byte datagram every ``interval_s``
(a header such as TURN's ChannelData one in front), the legs' send times spread evenly over
the interval (1 ms slots) instead of one burst per tick. Each payload starts with its send
time (``time.monotonic_ns``: CLOCK_MONOTONIC, one clock for every process of the machine), so
the receiving leg, in the same worker, has the datagram's one-way delay. Workers are forked
(:mod:`multiprocessing`, ``fork``) and inherit the sockets; the calls are split between them
whole, so each worker receives only what its own legs sent. Sockets are plain non-blocking
sockets read with ``epoll`` until ``EAGAIN``: no asyncio transport per socket.
"""

from __future__ import annotations

import array
import math
import multiprocessing
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from tools.bench.relay_common import FRAME

Address = tuple[str, int]
_STAMP = struct.Struct(">Q")
_FILLER = bytes(FRAME - _STAMP.size)
#: after the sending window, how long a worker waits for what is still in flight
DRAIN_S = 1.0
#: ... or until nothing has arrived for this long
DRAIN_QUIET_S = 0.25
SLOT_S = 0.001


@dataclass(frozen=True)
class Leg:
    """One end of a call: its socket, where its relayed datagrams go (with what header), and
    the other end's own address (for the direct comparison)."""

    sock: socket.socket
    relay_to: Address
    relay_header: bytes
    direct_to: Address


Call = tuple[Leg, Leg]


@dataclass(frozen=True)
class LoadResult:
    offered: int
    sent: int
    received: int
    delays_ns: array.array[int]
    workers: int
    #: sends that left more than one interval after their scheduled time
    late_sends: int


def payload_offset(datagram: bytes) -> int | None:
    """Where the stamped payload starts: 0 (bare) or 4 (ChannelData); None for anything
    else (a relay's control datagram)."""
    extra = len(datagram) - FRAME
    if extra == 0:
        return 0
    if extra == 4 and 0x40 <= datagram[0] <= 0x4F:
        return 4
    return None


def _worker(sends: list[tuple[socket.socket, Address, bytes]], start_at: float,
            interval_s: float, seconds: float, nice: int, conn: Connection) -> None:
    """Send on schedule from every leg for ``seconds`` from ``start_at``, receive throughout
    and for up to :data:`DRAIN_S` after; report (offered, sent, received, late) and the
    delays. A worker that falls behind sends late, and stops at the window's end: what it
    had not sent by then counts as offered, not sent."""
    if nice:
        os.nice(nice)
    poller = select.epoll()
    by_fd = {}
    for sock, _, _ in sends:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = sock
    slots = max(1, min(len(sends), round(interval_s / SLOT_S)))
    groups = [sends[g::slots] for g in range(slots)]
    step = interval_s / slots
    delays: array.array[int] = array.array("q")
    sent = received = late = 0
    end = start_at + seconds
    k = 0  # the k-th slot since start_at
    pack, stamp_now, filler = _STAMP.pack, time.monotonic_ns, _FILLER

    def drain(timeout: float) -> None:
        nonlocal received
        for fd, _ in poller.poll(timeout):
            sock = by_fd[fd]
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                now_ns = stamp_now()
                at = payload_offset(data)
                if at is not None:
                    received += 1
                    delays.append(now_ns - _STAMP.unpack_from(data, at)[0])

    slot_count = math.ceil(seconds / step - 1e-9)  # slots k with start_at + k * step < end
    offered = sum(len(groups[k % slots]) for k in range(slot_count))
    while k < slot_count:
        due = start_at + k * step
        now = time.monotonic()
        if now >= end:
            break  # behind schedule: what is still due is offered, not sent
        if now < due:
            drain(due - now)
            continue
        if now - due > interval_s:
            late += len(groups[k % slots])
        for sock, dest, header in groups[k % slots]:
            try:
                sock.sendto(header + pack(stamp_now()) + filler, dest)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass  # a full send buffer or an ICMP error: not sent
        k += 1
    deadline = time.monotonic() + DRAIN_S
    quiet_since, seen = time.monotonic(), received
    while received < sent and (left := deadline - time.monotonic()) > 0:
        drain(min(left, 0.05))
        if received != seen:
            quiet_since, seen = time.monotonic(), received
        elif time.monotonic() - quiet_since > DRAIN_QUIET_S:
            break  # nothing for a while: the rest was lost
    conn.send((offered, sent, received, late))
    conn.send_bytes(delays.tobytes())
    conn.close()


def run_load(calls: list[Call], interval_s: float, seconds: float, relayed: bool,
             procs: int = 2, on_start: Callable[[], None] | None = None,
             lead_s: float = 0.3, nice: int = 0) -> LoadResult:
    """Offer the load (through the relay, or ``relayed=False``: straight to the peer) from
    ``procs`` forked workers. ``on_start`` runs in this process when sending starts (a CPU
    sample of the relay); returns once every worker has drained and reported."""
    workers = max(1, min(procs, len(calls)))
    shares: list[list[tuple[socket.socket, Address, bytes]]] = [[] for _ in range(workers)]
    for i, call in enumerate(calls):
        for leg in call:
            dest, header = (leg.relay_to, leg.relay_header) if relayed else (leg.direct_to, b"")
            shares[i % workers].append((leg.sock, dest, header))
    ctx = multiprocessing.get_context("fork")
    start_at = time.monotonic() + lead_s
    running = []
    for share in shares:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(share, start_at, interval_s, seconds, nice, child),
                           daemon=True)
        proc.start()
        child.close()
        running.append((proc, parent))
    time.sleep(max(0.0, start_at - time.monotonic()))
    if on_start is not None:
        on_start()
    offered = sent = received = late = 0
    delays: array.array[int] = array.array("q")
    for proc, parent in running:
        o, s, r, lt = parent.recv()
        delays.frombytes(parent.recv_bytes())
        offered, sent, received, late = offered + o, sent + s, received + r, late + lt
        proc.join(5)
    return LoadResult(offered, sent, received, delays, workers, late)
