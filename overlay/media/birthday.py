"""Birthday-paradox hole punching, sans-IO: :class:`BirthdayPuncher`, one session's punching
on one side when exactly one side maps per destination. :mod:`overlay.media.birthday_io` drives
it (the extra sockets live there).

The *hard* side (NAT type ``symmetric``: a new random external port per destination) cannot
tell the peer which port to aim at. The *easy* side (``cone`` or ``public``: its external
address is the same for every destination) can. So:

- the hard side opens up to :data:`HARD_SOCKETS` extra UDP sockets and sends one probe from
  each to the easy side's reflexive candidates; each gets its own random external port ``X_i``
  and the hard side's NAT now admits packets from the easy side to ``X_i``;
- the easy side sends up to :data:`EASY_PROBES` probes from its media socket to random ports of
  the hard side's public address, paced (:data:`SPRAY_BATCH` every :data:`SPRAY_INTERVAL_S`);
  each opens its own NAT or firewall for answers from that port. A probe that hits some
  ``X_i`` reaches extra socket ``i``, which acks it and probes back: the first valid probe or
  ack on either side wins, as in :class:`~overlay.media.punch.Puncher`.

With ``n`` sockets among ``P`` possible ports, ``k`` random probes find one with probability
``1 - (1 - n/P)^k`` (:func:`success_probability`): 256 sockets and 1,024 probes over the 64,512
ports a fully random NAT uses (1024-65535) give 98.3 %. Both sides also keep doing simple
punching (the media socket probes the peer's candidates), so a full-cone peer still works the
simple way. Probes are the authenticated probes of :mod:`overlay.media.punch`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from overlay.core.addresses import Address
from overlay.media.punch import Datagram, Puncher

#: extra sockets the hard side opens (Tailscale's figure)
HARD_SOCKETS = 256
#: random-port probes the easy side sends at most
EASY_PROBES = 1024
#: the easy side's pacing: this many probes, then wait this long (250 probes/s, ~18 kB/s)
SPRAY_BATCH = 5
SPRAY_INTERVAL_S = 0.02
#: the hard side's extra sockets probe in batches of this many sockets (256 in ~80 ms)
OPEN_BATCH = 64
OPEN_INTERVAL_S = 0.02
#: the reflexive candidates of the peer the extra sockets probe / the spray aims at, at most
MAX_REFLEXIVE = 2
#: the ports a fully random NAT picks from (Linux: 1024-65535 for a source port >= 1024)
FIRST_PORT = 1024
PORTS = 65536 - FIRST_PORT
#: the whole attempt: the spray takes 1024/250 = 4.1 s, then a moment for the last answers
BIRTHDAY_TIMEOUT_S = 5.0

Role = Literal["hard", "easy"]
#: a datagram for one of the hard side's extra sockets: (socket index >= 1, data, address)
ExtraDatagram = tuple[int, bytes, Address]

EASY_NATS = ("cone", "public")


def birthday_role(local_nat: str, remote_nat: str) -> Role | None:
    """Our role in birthday punching between these NAT types (``binding.classify``), or None
    when it does not apply (both easy: simple punching; both hard, or a side unknown or
    without UDP: no punching helps)."""
    if local_nat == "symmetric" and remote_nat in EASY_NATS:
        return "hard"
    if local_nat in EASY_NATS and remote_nat == "symmetric":
        return "easy"
    return None


def success_probability(sockets: int, probes: int, ports: int = PORTS) -> float:
    """The chance that ``probes`` distinct random ports hit one of ``sockets`` open ones."""
    if sockets <= 0 or probes <= 0:
        return 0.0
    return 1.0 - math.exp(probes * math.log1p(-min(sockets, ports) / ports))


def reflexive(candidates: Sequence[Address]) -> list[Address]:
    """The peer's reflexive candidates: all but the first (its host candidate) when it named
    more than one, at most :data:`MAX_REFLEXIVE`."""
    return list(candidates[1:] if len(candidates) > 1 else candidates)[:MAX_REFLEXIVE]


class BirthdayPuncher(Puncher):
    """A :class:`Puncher` that also does the birthday part of its ``role`` (module doc).

    The media socket uses the :class:`Puncher` interface (``datagrams_to_send`` includes the
    easy side's paced spray). The hard side's extra sockets, numbered from 1, use
    :meth:`receive_on` and :meth:`extra_datagrams_to_send`. ``winner`` is the socket that won
    (0: the media socket). ``rng`` picks the ports to spray (seed it in tests)."""

    def __init__(
        self, session_id: bytes, key: bytes, local_candidates: Sequence[Address],
        remote_candidates: Sequence[Address], *, initiator: bool, now: float, role: Role,
        sockets: int = HARD_SOCKETS, probes: int = EASY_PROBES,
        timeout: float = BIRTHDAY_TIMEOUT_S, rng: random.Random | None = None,
    ) -> None:
        super().__init__(session_id, key, local_candidates, remote_candidates,
                         initiator=initiator, now=now, timeout=timeout)
        self.birthday_role: Role = role
        self.sockets = max(0, min(sockets, HARD_SOCKETS)) if role == "hard" else 0
        self.reflexive = reflexive(self.targets)
        self.winner: int | None = None
        #: the easy side's spray: (host, port) in the order sent
        self.spray: list[Address] = []
        if role == "easy" and self.reflexive:
            host = self.reflexive[0][0]
            taken = {p for h, p in self.targets if h == host}
            count = max(0, min(probes, EASY_PROBES, PORTS - len(taken)))
            ports = (rng or random.SystemRandom()).sample(range(FIRST_PORT, 65536),
                                                          count + len(taken))
            self.spray = [(host, p) for p in ports if p not in taken][:count]
        self.spray_sent = 0
        self.sockets_probed = 0
        self._next_spray = now
        self._next_open = now
        self._extra_replies: list[ExtraDatagram] = []

    # -- timer -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        timer = super().get_timer()
        if timer is None:
            return None
        if self.spray_sent < len(self.spray):
            timer = min(timer, self._next_spray)
        if self.sockets_probed < self.sockets:
            timer = min(timer, self._next_open)
        return timer

    # -- sending ---------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """The media socket's datagrams: the simple probe rounds, the acks owed, and (easy
        side) the spray's next batch when due."""
        out = super().datagrams_to_send(now)
        if (self.state == "punching" and now < self.deadline and now >= self._next_spray
                and self.spray_sent < len(self.spray)):
            batch = self.spray[self.spray_sent:self.spray_sent + SPRAY_BATCH]
            self.spray_sent += len(batch)
            self._next_spray = now + SPRAY_INTERVAL_S
            out += [self._probe(addr, now) for addr in batch]
        return out

    def extra_datagrams_to_send(self, now: float) -> list[ExtraDatagram]:
        """The extra sockets' datagrams: acks and probes owed, and (while punching) the next
        batch of sockets' first probes to the peer's reflexive candidates."""
        out, self._extra_replies = self._extra_replies, []
        if (self.state == "punching" and now < self.deadline and now >= self._next_open
                and self.sockets_probed < self.sockets):
            first = self.sockets_probed + 1
            last = min(self.sockets, self.sockets_probed + OPEN_BATCH)
            self.sockets_probed = last
            self._next_open = now + OPEN_INTERVAL_S
            for index in range(first, last + 1):
                out += [(index, *self._probe(addr, now)) for addr in self.reflexive]
        return out

    # -- receiving -------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram on the media socket (socket 0)."""
        before = self.state
        super().receive_datagram(data, addr, now)
        if before == "punching" and self.state == "succeeded":
            self.winner = 0

    def receive_on(self, index: int, data: bytes, addr: Address, now: float) -> None:
        """A datagram on extra socket ``index`` (1..``sockets``): what it owes goes out of the
        same socket; when it wins, it also probes the peer back (the peer's NAT admits that
        now), so one lost ack does not lose the hole."""
        if not 1 <= index <= self.sockets:
            raise ValueError(f"no extra socket {index}")
        before, owed = self.state, len(self._replies)
        Puncher.receive_datagram(self, data, addr, now)
        replies, self._replies = self._replies[owed:], self._replies[:owed]
        self._extra_replies += [(index, reply, to) for reply, to in replies]
        if before == "punching" and self.state == "succeeded":
            self.winner = index
            assert self.selected is not None
            self._extra_replies.append((index, *self._probe(self.selected, now)))
