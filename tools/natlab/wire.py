"""A userspace Ethernet "wire" with delay, jitter and loss, between two TAP devices.

Used by the NAT lab when the kernel has no ``sch_netem`` (``tc qdisc ... netem`` fails with
"Specified qdisc kind is unknown"). The lab creates two persistent TAP devices, one in each
network namespace, and starts this program; it attaches to both and copies every frame from
one to the other, dropping ``--loss-pct`` percent of them and delivering the rest
``--delay-ms`` (plus up to ``--jitter-ms``) later. Both directions get the same treatment.

Standard library only, so that it runs as a plain script::

    python wire.py --a NETNS:IFNAME --b NETNS:IFNAME --delay-ms 100 --loss-pct 2

It prints ``ready`` on stdout once both devices are attached and then runs until killed.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MAX_FRAME = 65536
QUEUE_LIMIT = 10000  # frames in flight per wire, like netem's default "limit 1000" but roomier


@dataclass(frozen=True)
class Endpoint:
    netns: str
    ifname: str


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def attach_tap(endpoint: Endpoint) -> int:
    """Enter the endpoint's namespace and attach to its persistent TAP device."""
    _setns(f"/run/netns/{endpoint.netns}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    ifr = struct.pack("16sH22x", endpoint.ifname.encode(), IFF_TAP | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    os.set_blocking(fd, False)
    return fd


def parse_endpoint(text: str) -> Endpoint:
    netns, sep, ifname = text.partition(":")
    if not sep or not netns or not ifname:
        raise argparse.ArgumentTypeError(f"expected NETNS:IFNAME, got {text!r}")
    return Endpoint(netns, ifname)


def run(
    fd_a: int, fd_b: int, delay_s: float, jitter_s: float, loss: float, seed: int | None
) -> None:
    rng = random.Random(seed)
    peer = {fd_a: fd_b, fd_b: fd_a}
    poller = select.poll()
    for fd in (fd_a, fd_b):
        poller.register(fd, select.POLLIN)
    heap: list[tuple[float, int, int, bytes]] = []
    seq = 0
    while True:
        timeout_ms: int | None = None
        if heap:
            timeout_ms = max(0, int((heap[0][0] - time.monotonic()) * 1000) + 1)
        for fd, _event in poller.poll(timeout_ms):
            for _ in range(256):  # drain a burst, but keep delivering on time
                try:
                    frame = os.read(fd, MAX_FRAME)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EBADFD, errno.EIO, errno.ENODEV):
                        return  # device gone: the namespace was deleted
                    raise
                if not frame:
                    return
                if loss and rng.random() < loss:
                    continue
                if len(heap) >= QUEUE_LIMIT:
                    continue
                due = time.monotonic() + delay_s + (rng.random() * jitter_s if jitter_s else 0.0)
                heapq.heappush(heap, (due, seq, peer[fd], frame))
                seq += 1
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _due, _seq, out, frame = heapq.heappop(heap)
            try:
                os.write(out, frame)
            except BlockingIOError:
                pass  # the receiving device's queue is full: the frame is lost
            except OSError as exc:
                if exc.errno in (errno.EBADFD, errno.EIO, errno.ENODEV):
                    return
                raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=parse_endpoint, required=True, metavar="NETNS:IFNAME")
    parser.add_argument("--b", type=parse_endpoint, required=True, metavar="NETNS:IFNAME")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd_a = attach_tap(args.a)
    fd_b = attach_tap(args.b)
    print("ready", flush=True)
    try:
        run(fd_a, fd_b, args.delay_ms / 1000, args.jitter_ms / 1000, args.loss_pct / 100, args.seed)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
