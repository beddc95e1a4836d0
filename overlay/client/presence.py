"""The client's presence records and its name claim: signed with sequence numbers that only
grow.

The last sequence number is remembered in ``client.json`` in the state dir, so the numbers
keep growing across restarts even if the clock steps back
(:class:`overlay.core.seq_state.SeqCounter`). The name claim (31 days) rides along in every
``Attach`` and is re-signed at most once a day (:data:`CLAIM_REFRESH_S`), so the network keeps
the name for at least 30 days after this client last ran.
"""

from __future__ import annotations

import time
from pathlib import Path

from overlay.client.attach_policy import Candidate
from overlay.client.options import ClientOptions
from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.records import SignedRecord
from overlay.core.seq_state import SeqCounter
from overlay.media.quic.core import ZERO_RTT_CAPABILITY
from overlay.media.tcp_listener import TCP_FIRST_CAPABILITY

STATE_FILE = "client.json"
#: an offline record outlives the online ones by far: "offline" beats "unknown"
OFFLINE_LIFETIME_S = 23 * 3600.0
#: the name claim is re-signed when it is this old (it lives records.NAME_CLAIM_LIFETIME_S)
CLAIM_REFRESH_S = 24 * 3600.0
#: what an online record says this client takes (a caller reads them from it)
CAPABILITIES = (ZERO_RTT_CAPABILITY, TCP_FIRST_CAPABILITY)


def presence_seq(state_dir: Path | None) -> SeqCounter:
    """The presence sequence counter kept in ``state_dir`` (in memory without one)."""
    return SeqCounter(
        state_dir / STATE_FILE if state_dir is not None else None,
        ignored_event="client_state_ignored", not_saved_event="client_state_not_saved",
    )


class PresenceSigner:
    """Signs this device's presence records: online at a supernode, or offline."""

    def __init__(self, identity: Identity, opts: ClientOptions) -> None:
        self.identity = identity
        self.opts = opts
        self.seq = presence_seq(opts.state_dir)
        self._claim: SignedRecord | None = None

    def online(self, cand: Candidate) -> SignedRecord:
        return records.presence(
            self.identity, self.opts.user, self.opts.device, seq=self.seq.next(),
            supernode_key=cand.node_key, supernode_host=cand.host, supernode_port=cand.port,
            capabilities=CAPABILITIES, lifetime_s=self.opts.presence_lifetime_s,
        )

    def offline(self) -> SignedRecord:
        return records.presence(
            self.identity, self.opts.user, self.opts.device, seq=self.seq.next(),
            online=False, lifetime_s=OFFLINE_LIFETIME_S,
        )

    def claim(self, now: float | None = None) -> SignedRecord:
        """This user's name claim: the same record for a day, then a re-signed one."""
        t = time.time() if now is None else now
        if self._claim is None or t - self._claim.record.issued_at >= CLAIM_REFRESH_S:
            self._claim = records.name_claim(self.identity, self.opts.user,
                                             seq=self.seq.next(), now=t)
        return self._claim
