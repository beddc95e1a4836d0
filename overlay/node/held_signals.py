"""Forwarded signals a receiving supernode holds while its gate looks the sender up
(sans-IO: time is passed in).

When :class:`~overlay.node.signal_gate.SignalGate` answers ``checking`` (the directory or the
sender's owner is being looked up), the supernode answers the forwarding supernode
``checking`` at once, as the wire says, but keeps the signal and delivers it the moment the
lookup completes and the gate passes it: the callee no longer waits for the forwarder's next
ask (0.1, 0.25, 0.5 ... s later, each a round trip between supernodes). Nothing is delivered
before the gate passes it.

The forwarder still asks again, with the same arguments. :class:`HeldSignals` tells the
adapter, per signal (by :meth:`ForwardedSignal.digest` and the forwarder's key), whether it
is still held (answer ``checking``, do not check or hold it twice) or was delivered (answer
``ok``, do not deliver it twice). A held signal that is refused is forgotten: the next ask is
checked afresh, as before. Bounded: at most :attr:`max_held` held at once and
:attr:`max_per_forwarder` per forwarding key (past that, signals are answered ``checking``
without being held, as before), and :attr:`max_remembered` delivered digests for
:attr:`remember_s`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from enum import Enum


class Held(Enum):
    #: being checked: answer "checking"
    PENDING = "pending"
    #: passed the gate and handed to the client: answer "ok"
    DELIVERED = "delivered"


class HeldSignals:
    def __init__(self, max_held: int = 256, max_per_forwarder: int = 32,
                 max_remembered: int = 4096, remember_s: float = 30.0) -> None:
        self.max_held = max_held
        self.max_per_forwarder = max_per_forwarder
        self.max_remembered = max_remembered
        self.remember_s = remember_s
        #: (forwarder, digest) -> PENDING
        self._pending: dict[tuple[bytes, bytes], bytes] = {}
        self._per_forwarder: Counter[bytes] = Counter()
        #: (forwarder, digest) -> delivered until
        self._delivered: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()

    def state(self, forwarder: bytes, digest: bytes, now: float) -> Held | None:
        key = (forwarder, digest)
        if key in self._pending:
            return Held.PENDING
        until = self._delivered.get(key)
        if until is None:
            return None
        if until <= now:
            del self._delivered[key]
            return None
        return Held.DELIVERED

    def hold(self, forwarder: bytes, digest: bytes) -> bool:
        """Start holding a signal; False when the bounds are reached (do not hold it)."""
        key = (forwarder, digest)
        if key in self._pending:
            return False
        if len(self._pending) >= self.max_held \
                or self._per_forwarder[forwarder] >= self.max_per_forwarder:
            return False
        self._pending[key] = forwarder
        self._per_forwarder[forwarder] += 1
        return True

    def release(self, forwarder: bytes, digest: bytes, delivered: bool, now: float) -> None:
        """The held signal was decided: delivered (remembered, so an ask again is answered
        ``ok``) or not (forgotten)."""
        key = (forwarder, digest)
        if self._pending.pop(key, None) is not None:
            self._per_forwarder[forwarder] -= 1
            if self._per_forwarder[forwarder] <= 0:
                del self._per_forwarder[forwarder]
        if delivered:
            self._delivered.pop(key, None)
            self._delivered[key] = now + self.remember_s
            while len(self._delivered) > self.max_remembered:
                self._delivered.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pending)
