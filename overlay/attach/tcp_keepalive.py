"""The kernel's TCP keepalive on a client's sessions: a supernode whose host is gone is noticed
in seconds.

A supernode that crashes hard, loses power or drops off the network sends no FIN and no RST.
Without this, its clients learn of it only after three missed heartbeats (90 s at the default
30 s), and stay unreachable that long (tools/sim, churn ``harsh``: ``relist_s_p99`` 96 s). With
it, the client's kernel sends a probe after ``idle_s`` without traffic, then every
``interval_s``, and ends the connection after ``count`` unanswered probes; ``TCP_USER_TIMEOUT``
ends it the same way when data it sent stays unacknowledged that long. The client then fails
over to its warm backup at once. The supernode's kernel answers the probes: no work in its
event loop, two empty segments per idle client every ``idle_s`` (at 10,000 clients and 2 s:
~10,000 packets/s handled by the kernel). The application's heartbeats stay as they are.

Linux socket options (``TCP_KEEPIDLE``, ``TCP_KEEPINTVL``, ``TCP_KEEPCNT``,
``TCP_USER_TIMEOUT``); where one is missing the settings the platform has are applied.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from overlay.core.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TcpKeepalive:
    #: 4 unanswered probes a second apart: a 4 s outage (8 % of round trips lost on a bad
    #: link: 4e-5 per probe round) does not end a session, a silent host is gone in 6 s
    idle_s: float = 2.0
    interval_s: float = 1.0
    count: int = 4

    def __post_init__(self) -> None:
        if self.idle_s < 1 or self.interval_s < 1 or not 1 <= self.count <= 127:
            raise ValueError("keepalive: idle and interval at least 1 s, 1-127 probes")

    @property
    def dead_after_s(self) -> float:
        """The longest a silent peer goes unnoticed."""
        return self.idle_s + self.interval_s * self.count


def enable_keepalive(transport: asyncio.BaseTransport, keepalive: TcpKeepalive) -> bool:
    """Turn keepalive on for ``transport``'s socket; False (logged) when it has none."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        log.info("tcp_keepalive_unavailable", reason="no socket")
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", int(keepalive.idle_s)),
                            ("TCP_KEEPINTVL", int(keepalive.interval_s)),
                            ("TCP_KEEPCNT", keepalive.count),
                            ("TCP_USER_TIMEOUT", int(keepalive.dead_after_s * 1000))):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:
        log.info("tcp_keepalive_unavailable", reason=str(exc))
        return False
    return True
