"""The relay's budget, sans-IO: admission, token buckets, per-session limits.

Every method takes an explicit ``now`` (seconds, any monotonic clock) and does no I/O; the
asyncio server (:mod:`overlay.relay.server`) asks it, per chunk, how many bytes it may
forward now and how long to pause reading when the answer is "none".

Semantics (all rates are bits per second of relayed payload, i.e. TCP payload bytes x 8;
the relay's own handshake bytes are not counted):

- **Total budget B** (``total_bps``): every byte the relay forwards counts once, whichever
  direction it goes. A relay-wide token bucket enforces it.
- **Session rate** r: what a session reserved at admission: ``min(requested, C)`` (a request
  of 0 means "as much as allowed", i.e. C), lowered to the callee's request if that is
  smaller. Both directions of a session draw from **one** bucket of rate r, so a session
  never forwards more than r in total (a one-way file transfer gets all of r; a symmetric
  call gets about r/2 each way).
- **Per-session cap C** (``session_cap_bps``): the most a session may reserve.
- **Admission**: a new session is refused with ``"budget"`` when the rates already reserved
  plus its own would exceed B, and with ``"sessions"`` at ``max_sessions`` (waiting sessions
  count: they hold their reservation). Sessions are refused rather than every session
  degraded; so the sum of session buckets never exceeds B, and the relay-wide bucket is a
  safety net that only binds on coinciding bursts.
- **Buckets**: each holds at most ``burst_s`` seconds of its rate (never less than
  :data:`MIN_SLICE` bytes) and starts full. :meth:`Budget.grant` gives at most what both the
  session's and the relay's bucket hold, and nothing rather than a sliver smaller than
  ``min(wanted, MIN_SLICE)``; so over any interval T a session forwards at most
  ``r*T + burst`` bytes and the relay at most ``B*T + burst``.
- **Per network**: the sessions created from one IPv4 /24 (IPv6 /48) reserve at most
  ``subnet_share`` of B together (refused ``"subnet limit"``), so one network cannot take a
  relay whatever credentials it holds. (Session counts per IP, network and key are
  :mod:`overlay.relay.admission`'s.)
- **Limits**: ``max_session_bytes`` (both directions together) and ``max_session_s`` (from
  pairing) end a session; rate never does (the server applies back-pressure instead). The
  defaults fit an hour of a two-way 64 kbit/s voice call (57.6 MB) or a bounded piece of a
  file transfer (64 MiB; a longer transfer resumes on a new session).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overlay.relay.errors import RelayError
from overlay.relay.protocol import (
    REASON_BUDGET,
    REASON_DISABLED,
    REASON_SESSIONS,
    REASON_SUBNET_LIMIT,
)

#: the smallest piece the relay forwards while throttled (fewer, larger writes)
MIN_SLICE = 4096
DEFAULT_SESSION_CAP_BPS = 1_000_000
#: the shortest pause (a timer sooner than this is not worth it)
MIN_WAIT_S = 0.001

BYTE_LIMIT = "byte limit"
DURATION_LIMIT = "duration limit"


def default_session_cap(total_bps: int) -> int:
    """A quarter of the budget, but at least 1 Mbit/s (or the whole budget when smaller)."""
    return max(total_bps // 4, min(total_bps, DEFAULT_SESSION_CAP_BPS))


@dataclass(frozen=True)
class BudgetConfig:
    #: B, bits/s over every forwarded byte (both directions); 0 (the default) disables the relay
    total_bps: int = 0
    #: C, bits/s a session may reserve (both directions together); 0: ``default_session_cap``
    session_cap_bps: int = 0
    max_sessions: int = 32
    #: a session ends after this many bytes (both directions) or seconds from pairing
    max_session_bytes: int = 64 * 2**20
    max_session_s: float = 3600.0
    #: sessions (waiting or paired) one caller IP, one /24 (IPv6 /48), one key may hold
    max_sessions_per_ip: int = 8
    max_sessions_per_subnet: int = 4
    max_sessions_per_key: int = 4
    #: the part of B the sessions created from one /24 (IPv6 /48) may reserve together
    subnet_share: float = 0.5
    #: bucket depth, in seconds of the bucket's rate
    burst_s: float = 0.02

    @property
    def enabled(self) -> bool:
        return self.total_bps > 0 and self.max_sessions > 0

    @property
    def cap_bps(self) -> int:
        if self.session_cap_bps > 0:
            return min(self.session_cap_bps, self.total_bps)
        return default_session_cap(self.total_bps)

    @property
    def subnet_bps(self) -> int:
        """The rate one /24 (IPv6 /48) may reserve: ``subnet_share`` of B, at least one
        session's cap (a share smaller than that would refuse every session)."""
        return max(self.cap_bps, int(self.total_bps * self.subnet_share))


class Refusal(RelayError):
    """Admission refused; ``reason`` is what the relay tells the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Bucket:
    """A token bucket in bytes; starts full."""

    rate_bps: int
    burst_s: float
    now: float
    tokens: float = field(init=False)
    depth: float = field(init=False)

    def __post_init__(self) -> None:
        self.set_rate(self.rate_bps)
        self.tokens = self.depth

    @property
    def bytes_per_s(self) -> float:
        return self.rate_bps / 8.0

    def set_rate(self, rate_bps: int) -> None:
        self.rate_bps = rate_bps
        self.depth = max(float(MIN_SLICE), self.bytes_per_s * self.burst_s)
        if hasattr(self, "tokens"):
            self.tokens = min(self.tokens, self.depth)

    def refill(self, now: float) -> None:
        if now > self.now:
            if self.tokens < self.depth:  # (a credit above the depth is spent, not cut)
                self.tokens = min(self.depth, self.tokens + (now - self.now) * self.bytes_per_s)
            self.now = now

    def credit(self, nbytes: float) -> None:
        """A one-time allowance on top of what the bucket holds, at most ``nbytes`` above its
        depth: spent like tokens, never refilled."""
        self.tokens = min(self.tokens + nbytes, self.depth + nbytes)

    def wait_for(self, nbytes: float) -> float:
        """Seconds (after the last refill) until the bucket holds ``nbytes``."""
        missing = nbytes - self.tokens
        return 0.0 if missing <= 0 else missing / self.bytes_per_s


@dataclass(eq=False)
class SessionBudget:
    """One session's reservation, bucket and counters."""

    rate_bps: int
    bucket: Bucket
    created_at: float
    #: the /24 (IPv6 /48) the session was created from ("" for none)
    subnet: str = ""
    paired_at: float | None = None
    bytes: int = 0
    open: bool = True


class Budget:
    def __init__(self, config: BudgetConfig, now: float) -> None:
        self.config = config
        self.bucket = Bucket(max(1, config.total_bps), config.burst_s, now)
        self.sessions: set[SessionBudget] = set()
        self.reserved_bps = 0
        self.forwarded_bytes = 0
        #: rate reserved by the sessions created from each /24 (IPv6 /48)
        self.reserved_by_subnet: dict[str, int] = {}

    @property
    def spare_bps(self) -> int:
        return max(0, self.config.total_bps - self.reserved_bps)

    def admit(self, requested_bps: int, now: float, subnet: str = "") -> SessionBudget:
        """Reserve a session's rate for a caller in ``subnet`` (its /24 or /48; ``""``: not
        counted per network), or raise :class:`Refusal`."""
        cfg = self.config
        if not cfg.enabled:
            raise Refusal(REASON_DISABLED)
        if len(self.sessions) >= cfg.max_sessions:
            raise Refusal(REASON_SESSIONS)
        rate = cfg.cap_bps if requested_bps <= 0 else min(requested_bps, cfg.cap_bps)
        if self.reserved_bps + rate > cfg.total_bps:
            raise Refusal(REASON_BUDGET)
        if subnet and self.reserved_by_subnet.get(subnet, 0) + rate > cfg.subnet_bps:
            raise Refusal(REASON_SUBNET_LIMIT)
        session = SessionBudget(rate, Bucket(rate, cfg.burst_s, now), now, subnet)
        self.sessions.add(session)
        self._reserve(session, rate)
        return session

    def _reserve(self, session: SessionBudget, delta_bps: int) -> None:
        self.reserved_bps += delta_bps
        if session.subnet:
            left = self.reserved_by_subnet.get(session.subnet, 0) + delta_bps
            if left > 0:
                self.reserved_by_subnet[session.subnet] = left
            else:
                self.reserved_by_subnet.pop(session.subnet, None)

    def pair(self, session: SessionBudget, requested_bps: int, now: float) -> None:
        """The callee arrived: the session's rate drops to its request if that is lower."""
        if 0 < requested_bps < session.rate_bps:
            self._reserve(session, requested_bps - session.rate_bps)
            session.rate_bps = requested_bps
            session.bucket.set_rate(requested_bps)
        session.paired_at = now

    def start_credit(self, session: SessionBudget, nbytes: int) -> None:
        """Let a session that just paired forward ``nbytes`` at once beyond its rate (its
        bucket's and the relay's: the relay's holds at most one such credit above its depth,
        however many sessions pair together)."""
        session.bucket.credit(nbytes)
        self.bucket.credit(nbytes)

    def release(self, session: SessionBudget) -> None:
        if session.open:
            session.open = False
            self.sessions.discard(session)
            self._reserve(session, -session.rate_bps)

    def grant(self, session: SessionBudget, wanted: int, now: float) -> int:
        """How many of ``wanted`` bytes may be forwarded now (0 or at least
        ``min(wanted, MIN_SLICE)``); the granted bytes are charged to both buckets."""
        if wanted <= 0 or not session.open:
            return 0
        session.bucket.refill(now)
        self.bucket.refill(now)
        # (a hair of tolerance: a refill timed to the byte must not miss it by a rounding)
        available = int(min(session.bucket.tokens, self.bucket.tokens) + 1e-6)
        if available < min(wanted, MIN_SLICE):
            return 0
        n = min(wanted, available, self.config.max_session_bytes - session.bytes)
        if n <= 0:
            return 0
        return self._charge(session, n)

    def lend(self, session: SessionBudget, now: float, least: int, most: int) -> int:
        """Take up to ``most`` bytes from both buckets at once, for forwarding done elsewhere
        (the datagram relay's fast path): all they hold, but 0 rather than less than
        ``least``. Charged as :meth:`grant` charges; :meth:`refund` gives back what was not
        used. (The bounds above hold: what is lent was in the buckets.)"""
        if not session.open:
            return 0
        session.bucket.refill(now)
        self.bucket.refill(now)
        n = int(min(session.bucket.tokens, self.bucket.tokens, most,
                    self.config.max_session_bytes - session.bytes))
        if n < least:
            return 0
        return self._charge(session, n)

    def _charge(self, session: SessionBudget, n: int) -> int:
        """``n`` bytes forwarded (or lent): taken from both buckets and counted."""
        session.bucket.tokens -= n
        self.bucket.tokens -= n
        session.bytes += n
        self.forwarded_bytes += n
        return n

    def refund(self, session: SessionBudget, nbytes: int) -> None:
        """Give back ``nbytes`` of a :meth:`lend` that were not forwarded, whole (a credit
        above the depth is not cut: it was lent from the bucket). The buckets refill while
        a lend is out, so a session lent to the fast path may forward up to one more bucket
        depth beyond ``r*T + burst`` over an interval."""
        if nbytes <= 0:
            return
        session.bytes -= nbytes
        self.forwarded_bytes -= nbytes
        session.bucket.credit(nbytes)
        self.bucket.credit(nbytes)

    def wait_s(self, session: SessionBudget, wanted: int, now: float) -> float:
        """Seconds until :meth:`grant` can give something for ``wanted`` bytes."""
        session.bucket.refill(now)
        self.bucket.refill(now)
        need = min(wanted, MIN_SLICE)
        return max(session.bucket.wait_for(need), self.bucket.wait_for(need), MIN_WAIT_S)

    def exceeded(self, session: SessionBudget, now: float) -> str | None:
        """The limit that ends this session, if any (never rate: that is back-pressure)."""
        if session.bytes >= self.config.max_session_bytes:
            return BYTE_LIMIT
        if session.paired_at is not None and now - session.paired_at >= self.config.max_session_s:
            return DURATION_LIMIT
        return None
