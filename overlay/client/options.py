"""The client daemon's settings (:class:`ClientOptions`) and the default device name."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from overlay.attach import SessionConfig
from overlay.attach.tcp_keepalive import TcpKeepalive
from overlay.client.attach_policy import BackoffPolicy
from overlay.client.late_refine import LateRefinePolicy
from overlay.core import records
from overlay.core.records import NAME_PATTERN
from overlay.media.inbox_limits import InboxLimits

MAX_PRESENCE_REFRESH_S = 8 * 3600.0


def default_device() -> str:
    """A valid device name derived from the host name (``device`` if nothing usable)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", socket.gethostname().lower())
    name = name.lstrip("._-")[:64].rstrip("-") or "device"
    return name if NAME_PATTERN.match(name) else "device"


@dataclass
class ClientOptions:
    user: str
    key_path: Path
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    device: str = field(default_factory=default_device)
    state_dir: Path | None = None
    control_path: Path | None = None
    inbox: Path | None = None
    #: quota of the inbox (received files and signal files): bytes, files, free space kept
    inbox_limits: InboxLimits = field(default_factory=InboxLimits)
    #: False with ``--no-supernode``: this client never offers to serve as a supernode
    may_become_supernode: bool = True
    #: False with ``--no-port-mapping``: never ask the router to map the media ports
    port_mapping: bool = True
    #: uptime before a publicly reachable client becomes a supernode
    promote_after_s: float = 600.0
    #: port for the dial-back check and, once promoted, the supernode (0: any free port)
    listen_port: int = 0
    heartbeat_s: float = 30.0
    #: the kernel's TCP keepalive on the attachment and the backup: a supernode host that
    #: went silent is noticed within ``dead_after_s`` (6 s), not 3 heartbeats; None: off
    keepalive: TcpKeepalive | None = field(default_factory=TcpKeepalive)
    #: 5 min: at 10k clients per supernode, 60 s refreshes cost ~25% of a core (bench);
    #: a crashed client's record lingers at most 3 periods
    presence_refresh_s: float = 300.0
    probe_timeout_s: float = 2.0
    connect_timeout_s: float = 5.0
    attach_timeout_s: float = 10.0
    request_timeout_s: float = 5.0
    detach_wait_s: float = 3.0
    #: candidates probed in one go
    max_probes: int = 16
    #: whose invites are answered at once: "contacts" (others become requests) or "anyone"
    accept_from: str = "contacts"
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    #: some minutes after attaching, move to a clearly nearer supernode if there is one
    late_refine: LateRefinePolicy = field(default_factory=LateRefinePolicy)

    def __post_init__(self) -> None:
        records.check_name(self.user)
        records.check_name(self.device, "device name")
        if not 0 < self.presence_refresh_s <= MAX_PRESENCE_REFRESH_S:
            raise ValueError(f"presence refresh must be in (0, {MAX_PRESENCE_REFRESH_S:g}] s")
        if self.heartbeat_s <= 0:
            raise ValueError("heartbeat must be positive")
        if self.accept_from not in ("contacts", "anyone"):
            raise ValueError("accept-from is contacts or anyone")

    @property
    def presence_lifetime_s(self) -> float:
        return 3 * self.presence_refresh_s

    def session_config(self) -> SessionConfig:
        """Settings of every session the client opens (attachment, backup, lookups)."""
        return SessionConfig(
            handshake_timeout_s=self.connect_timeout_s,
            heartbeat_interval_s=self.heartbeat_s,
        )
