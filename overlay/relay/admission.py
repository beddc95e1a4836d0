"""Who may open a relay session (sans-IO): credentials, reservations, and the counts per IP,
per /24 (IPv6 /48) and per key that bound what one party can hold.

A caller's hello must carry a credential (:mod:`overlay.relay.protocol`): a voucher signed by
both users (:mod:`overlay.relay.voucher`), or the token of a reservation that a client attached
to this supernode made over its authenticated session (``RelayReserve``). Before any of that is
checked, and before anything is allocated, the caller's IP and network must hold fewer
sessions than their limits; then the voucher's keys (or the reserving client's key) must hold
fewer than theirs. The rate share of a network is the budget's business
(:meth:`overlay.relay.budget.Budget.admit`).

Every method takes ``now`` (monotonic seconds) and does no I/O.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TypeVar

from overlay.core.addresses import network_key, network_of
from overlay.relay.budget import BudgetConfig
from overlay.relay.protocol import (
    REASON_DISABLED,
    REASON_KEY_LIMIT,
    REASON_SESSIONS,
    REASON_SUBNET_LIMIT,
)

K = TypeVar("K")

#: how long a reservation waits for its caller's hello
RESERVATION_TTL_S = 60.0
#: reservations held at once on one relay (the oldest is forgotten first beyond this)
MAX_RESERVATIONS = 4096


def address_of(ip: str) -> str:
    """One address as it counts per IP (an IPv4-mapped IPv6 address is its IPv4 one)."""
    return network_of(ip, 32, 128) or ip




@dataclass(frozen=True)
class Reservation:
    token_hash: bytes
    #: the identity key of the attached client that made it
    key: bytes
    expires_at: float


@dataclass(eq=False)
class Holding:
    """What one admitted session counts against; released once."""

    ip: str
    subnet: str
    keys: tuple[bytes, ...]
    released: bool = False


@dataclass
class RelayAdmission:
    config: BudgetConfig
    per_ip: Counter[str] = field(default_factory=Counter)
    per_subnet: Counter[str] = field(default_factory=Counter)
    per_key: Counter[bytes] = field(default_factory=Counter)
    reservations: OrderedDict[bytes, Reservation] = field(default_factory=OrderedDict)
    #: live reservations per reserving key
    reserved: Counter[bytes] = field(default_factory=Counter)

    # -- reservations (from attached clients) -------------------------------------------------

    def reserve(self, token_hash: bytes, key: bytes, now: float) -> str | None:
        """An attached client ``key`` reserves the session named ``token_hash``; the refusal
        reason, or None when it is held for :data:`RESERVATION_TTL_S`."""
        self.expire(now)
        if not self.config.enabled:
            return REASON_DISABLED
        if token_hash in self.reservations:
            return None  # (both ends may be attached here; the first reservation counts)
        if self.per_key[key] + self.reserved[key] >= self.config.max_sessions_per_key:
            return REASON_KEY_LIMIT
        self.reservations[token_hash] = Reservation(token_hash, key, now + RESERVATION_TTL_S)
        self.reserved[key] += 1
        while len(self.reservations) > MAX_RESERVATIONS:
            self._forget(next(iter(self.reservations)))
        return None

    def reservation(self, token_hash: bytes, now: float) -> Reservation | None:
        self.expire(now)
        return self.reservations.get(token_hash)

    def expire(self, now: float) -> None:
        while self.reservations:
            first = next(iter(self.reservations.values()))
            if first.expires_at > now:
                break
            self._forget(first.token_hash)

    def _forget(self, token_hash: bytes) -> None:
        reservation = self.reservations.pop(token_hash, None)
        if reservation is not None:
            _decrement(self.reserved, reservation.key)

    # -- sessions -----------------------------------------------------------------------------

    def address_refusal(self, ip: str) -> tuple[str, str] | None:
        """(reason, detail) when the caller's IP or network holds its sessions already."""
        cfg = self.config
        if self.per_ip[address_of(ip)] >= cfg.max_sessions_per_ip:
            return REASON_SESSIONS, f"{cfg.max_sessions_per_ip} from {ip}"
        subnet = network_key(ip)
        if self.per_subnet[subnet] >= cfg.max_sessions_per_subnet:
            return REASON_SUBNET_LIMIT, f"{cfg.max_sessions_per_subnet} from {subnet}"
        return None

    def key_refusal(self, keys: tuple[bytes, ...], reserved_by: bytes | None = None
                    ) -> tuple[str, str] | None:
        """(reason, detail) when a key of the credential holds its sessions already (a
        reservation being used counts once, as the session it becomes)."""
        for key in keys:
            held = self.per_key[key] + self.reserved[key] - (key == reserved_by)
            if held >= self.config.max_sessions_per_key:
                return REASON_KEY_LIMIT, f"{self.config.max_sessions_per_key} for {key.hex()[:16]}"
        return None

    def hold(self, ip: str, keys: tuple[bytes, ...], reservation: Reservation | None
             ) -> Holding:
        """Count an admitted session (and use up its reservation)."""
        if reservation is not None:
            self._forget(reservation.token_hash)
        holding = Holding(address_of(ip), network_key(ip), tuple(dict.fromkeys(keys)))
        self.per_ip[holding.ip] += 1
        self.per_subnet[holding.subnet] += 1
        for key in holding.keys:
            self.per_key[key] += 1
        return holding

    def release(self, holding: Holding) -> None:
        if holding.released:
            return
        holding.released = True
        _decrement(self.per_ip, holding.ip)
        _decrement(self.per_subnet, holding.subnet)
        for key in holding.keys:
            _decrement(self.per_key, key)


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
