"""What a supernode is configured with (``overlay supernode`` builds it from its flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from overlay.relay.budget import BudgetConfig


@dataclass
class SupernodeOptions:
    max_clients: int = 10_000
    #: how often the supernode re-signs its own record (lifetime: three periods)
    record_refresh_s: float = 60.0
    #: the relay's budget and limits; its ``total_bps`` (B) is what the record advertises as
    #: ``relay_capacity_bps``, and 0 (the default) means no relaying
    relay: BudgetConfig = field(default_factory=BudgetConfig)
    #: the record is re-published on relay load changes, at most this often
    relay_republish_min_s: float = 3.0
    #: a Vivaldi round (RTT to a few other supernodes) about this often; 0: never
    vivaldi_interval_s: float = 20.0
    vivaldi_peers_per_round: int = 3
    #: the record is re-published early when the coordinate moved this far (seconds of RTT)
    vivaldi_republish_moved_s: float = 0.005
