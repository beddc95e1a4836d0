"""What a supernode is configured with (``overlay supernode`` builds it from its flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from overlay.relay.budget import BudgetConfig


@dataclass(frozen=True)
class SignalLimits:
    """What a supernode delivers to its clients (DHT method ``signal``, and signals between
    two of its own clients), and how it checks senders. Each limit is a token bucket per key:
    a sustained rate (signals per second) and a burst; documented in docs/ARCHITECTURE.md."""

    #: per caller key (``from_key``): one user's invites and answers over all its devices
    per_caller_rate: float = 0.5
    per_caller_burst: float = 20.0
    #: per target user (``to_user``): what every caller together may deliver to one user
    per_target_rate: float = 5.0
    per_target_burst: float = 50.0
    #: per forwarding supernode (the DHT envelope's key): all its clients together
    per_supernode_rate: float = 100.0
    per_supernode_burst: float = 400.0
    #: keys each limit remembers; the least recently seen is forgotten first
    max_tracked_keys: int = 16_384
    #: the supernode directory is re-read on the next signal once it is this old
    directory_ttl_s: float = 30.0
    #: a sender missing from the directory makes it re-read at most this often
    directory_refresh_min_s: float = 2.0
    #: how long a name's owner is remembered; a name nobody owns (or in conflict): shorter
    owner_ttl_s: float = 30.0
    unowned_ttl_s: float = 5.0
    max_owners_cached: int = 4096
    #: name-owner lookups in flight at once; other new senders are answered "checking"
    max_owner_lookups: int = 16


@dataclass
class SupernodeOptions:
    max_clients: int = 10_000
    #: how often the supernode re-signs its own record (lifetime: three periods)
    record_refresh_s: float = 60.0
    #: the relay's budget and limits; its ``total_bps`` (B) is what the record advertises as
    #: ``relay_capacity_bps``, and 0 (the default) means no relaying
    relay: BudgetConfig = field(default_factory=BudgetConfig)
    #: the UDP port of the datagram relay for calls (:mod:`overlay.relay.datagram`), on the
    #: listen address; None (the default): no datagram relay; 0: any free port
    relay_udp_port: int | None = None
    #: forward paired call sessions' datagrams in the C fast path when it is built
    #: (:mod:`overlay.relay._forwarder`); False: every datagram through the Python core
    relay_udp_fast_path: bool = True
    #: a relay session (TCP or datagram) that forwards nothing for this long ends ("idle")
    relay_idle_timeout_s: float = 60.0
    #: the record is re-published on relay load changes, at most this often
    relay_republish_min_s: float = 3.0
    #: a Vivaldi round (RTT to a few other supernodes) about this often; 0: never
    vivaldi_interval_s: float = 20.0
    vivaldi_peers_per_round: int = 3
    #: the record is re-published early when the coordinate moved this far (seconds of RTT)
    vivaldi_republish_moved_s: float = 0.005
    #: limits and checks on the signals delivered here
    signals: SignalLimits = field(default_factory=SignalLimits)
