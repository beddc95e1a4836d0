"""The client's reflexive UDP address and NAT type, asked of supernodes (sans-IO + asyncio).

A supernode answers the DHT application method ``"binding"`` with the source address of the
request: ``{"host": ip, "port": port}`` in a signed RESPONSE envelope. The request goes out of
the client's *media socket*, the same UDP socket later used for hole punching, so the answer is
the public address a peer must aim at.

NAT type, from two supernodes asked from the same socket (:func:`classify`):

- ``"public"``: the mapped address is the socket's own address (no NAT; a stateful firewall
  may still filter, which this cannot tell);
- ``"cone"``: both supernodes saw the same address (endpoint-independent mapping: punching
  works);
- ``"symmetric"``: each saw another port (a mapping per destination: punching to a
  port-restricted peer fails);
- ``"no-udp"``: nobody answered (UDP blocked, e.g. a TCP-only network);
- ``"unknown"``: only one answered.

Retransmissions follow RFC 8489 §6.2.1: when the supernode's RTT is known (the client
measured it when it chose its supernodes), the first retransmission waits
:data:`RTO_PER_RTT` RTTs (never less than :data:`BINDING_RTO_S`) and the window lets three
transmissions be answered (:func:`binding_timing`); on a fast link nothing changes. One
answer alone (``"unknown"``, say while the backup supernode is away) does not undo a type two
supernodes gave before when it agrees with it (:func:`settle`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from overlay.core.addresses import Address
from overlay.core.identity import NODE_ID_BYTES, PUBLIC_KEY_BYTES, Identity, node_id_for
from overlay.dht.envelope import ANY_RECIPIENT, Envelope, Flags, Kind, new_msg_id, seal

#: retransmit a binding request this often (doubling), at most this many times in all
BINDING_RTO_S = 0.3
BINDING_ATTEMPTS = 4
#: how long a binding waits for an answer when the supernode's RTT is not known
BINDING_TIMEOUT_S = 1.5
#: when it is known, the first retransmission waits this many RTTs (the RTO exceeds the RTT)
RTO_PER_RTT = 1.5
#: and the window is never longer than this
MAX_BINDING_TIMEOUT_S = 6.0


def binding_timing(rtt_s: float | None, timeout: float = BINDING_TIMEOUT_S
                   ) -> tuple[float, float]:
    """(first retransmission, window) of a binding to a supernode ``rtt_s`` away (None: not
    measured; then :data:`BINDING_RTO_S` and ``timeout``). The requests go out at 0, RTO and
    3 RTO; the window gives the third one an RTT and a half to be answered."""
    if rtt_s is None or rtt_s <= 0:
        return BINDING_RTO_S, timeout
    rto = max(BINDING_RTO_S, RTO_PER_RTT * rtt_s)
    return rto, min(MAX_BINDING_TIMEOUT_S, max(timeout, 3 * rto + 1.5 * rtt_s))


class EnvelopePort(Protocol):
    """What the binding client needs of a UDP socket (``MediaSocket`` offers it): send a
    datagram, and have RESPONSE envelopes with a given msg_id handed over."""

    @property
    def local_address(self) -> Address: ...

    def sendto(self, data: bytes, addr: Address) -> None: ...

    def subscribe(self, msg_id: bytes, callback: Callable[[Envelope, Address], None]) -> None: ...

    def unsubscribe(self, msg_id: bytes) -> None: ...


def _key_matches(sender_key: bytes, expected: bytes) -> bool:
    """``expected`` is the supernode's public key (32 bytes) or its node id (20 bytes)."""
    if len(expected) == PUBLIC_KEY_BYTES:
        return sender_key == expected
    if len(expected) == NODE_ID_BYTES:
        return node_id_for(sender_key) == expected
    return False


def parse_binding(payload: object) -> Address | None:
    """The address in a binding answer, or None when it is not one."""
    if not isinstance(payload, dict):
        return None
    host, port = payload.get("host"), payload.get("port")
    if type(host) is not str or not 0 < len(host) <= 64 or type(port) is not int \
            or not 0 < port < 65536:
        return None
    return (host, port)


@dataclass
class BindingTransaction:
    """One binding request to one supernode, with retransmissions (sans-IO, aioquic's
    vocabulary).

    :meth:`datagrams_to_send` returns the datagrams due (the first request, then
    retransmissions); :meth:`receive_envelope` takes a RESPONSE envelope with our msg_id (the
    socket parsed and verified it); :meth:`get_timer` says when :meth:`handle_timer` is next
    due. ``done`` once answered or timed out; ``result`` is the mapped address or None.
    """

    identity: Identity
    server: Address
    node_key: bytes
    timeout: float
    now: float
    rto: float = BINDING_RTO_S
    attempts: int = BINDING_ATTEMPTS
    msg_id: bytes = field(default_factory=new_msg_id)
    result: Address | None = None
    done: bool = False
    sent: int = 0
    #: why the last answers were ignored (wrong sender, malformed): for logs
    ignored: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.deadline = self.now + self.timeout
        self._next_send = self.now
        recipient = (node_id_for(self.node_key) if len(self.node_key) == PUBLIC_KEY_BYTES
                     else self.node_key if len(self.node_key) == NODE_ID_BYTES
                     else ANY_RECIPIENT)
        self._own_id = node_id_for(self.identity.public_key)
        self._request = seal(self.identity, Kind.REQUEST, self.msg_id, Flags.CLIENT,
                             ["binding", []], recipient=recipient)

    def handle_timer(self, now: float) -> None:
        """Past the deadline without an answer, the transaction is done (``result`` None)."""
        if not self.done and now >= self.deadline:
            self.done = True

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        if self.done or now >= self.deadline:
            return []
        if now >= self._next_send and self.sent < self.attempts:
            self._next_send = now + self.rto * (2 ** self.sent)
            self.sent += 1
            return [(self._request, self.server)]
        return []

    def get_timer(self) -> float | None:
        if self.done:
            return None
        if self.sent < self.attempts:
            return min(self._next_send, self.deadline)
        return self.deadline

    def receive_envelope(self, env: Envelope, now: float) -> bool:
        """True when ``env`` answered this transaction."""
        if self.done or env.kind is not Kind.RESPONSE or env.msg_id != self.msg_id:
            return False
        if not _key_matches(env.sender_key, self.node_key):
            self.ignored.append("wrong_sender")
            return False
        if env.recipient != self._own_id:
            self.ignored.append("wrong_recipient")
            return False
        mapped = parse_binding(env.payload)
        if mapped is None:
            self.ignored.append("malformed")
            return False
        self.result = mapped
        self.done = True
        return True


def classify(local: Address, mapped: Sequence[Address | None]) -> str:
    """NAT type from the socket's own address and what each supernode saw (sans-IO).

    ``local`` must be the host address the socket is bound to (not ``0.0.0.0``)."""
    answers = [m for m in mapped if m is not None]
    if not answers:
        return "no-udp"
    if any(m == local for m in answers):
        return "public"
    if len(answers) < 2:
        return "unknown"
    if all(m == answers[0] for m in answers[1:]):
        return "cone"
    return "symmetric"


def settle(previous: str, previous_mapped: Sequence[Address], nat: str,
           mapped: Sequence[Address | None]) -> str:
    """The NAT type to go on with after a check found ``nat`` (``mapped``: each supernode's
    view): a lone answer (``"unknown"``) keeps a ``"cone"`` found before when it saw the
    same address, and a ``"symmetric"`` (a NAT does not change how it maps), sans-IO."""
    answers = [m for m in mapped if m is not None]
    if nat != "unknown" or len(answers) != 1:
        return nat
    if previous == "symmetric" or (previous == "cone" and answers[0] in previous_mapped):
        return previous
    return nat


@dataclass(frozen=True)
class NatReport:
    """What :func:`nat_type` found: the type, the socket's address, each supernode's view."""

    nat: str
    local: Address
    mapped: tuple[Address | None, ...]
    elapsed: float

    @property
    def candidates(self) -> list[Address]:
        """UDP candidates to announce: the host address, then each distinct mapped one."""
        out = [self.local]
        for m in self.mapped:
            if m is not None and m not in out:
                out.append(m)
        return out


# -- asyncio ---------------------------------------------------------------------------------


async def _run(port: EnvelopePort, txn: BindingTransaction) -> Address | None:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def on_envelope(env: Envelope, addr: Address) -> None:
        if txn.receive_envelope(env, time.monotonic()):
            wake.set()

    port.subscribe(txn.msg_id, on_envelope)
    try:
        while True:
            now = time.monotonic()
            txn.handle_timer(now)
            for datagram, addr in txn.datagrams_to_send(now):
                port.sendto(datagram, addr)
            if txn.done:
                return txn.result
            deadline = txn.get_timer()
            delay = 0.0 if deadline is None else max(0.0, deadline - now)
            wake.clear()
            with_timeout = loop.call_later(delay, wake.set)
            try:
                await wake.wait()
            finally:
                with_timeout.cancel()
    finally:
        port.unsubscribe(txn.msg_id)


async def reflexive_address(
    media: EnvelopePort, identity: Identity, supernode_addr: Address, node_key: bytes,
    timeout: float = 2.0, rto: float = BINDING_RTO_S,
) -> Address | None:
    """The address ``supernode_addr`` sees ``media``'s datagrams come from, or None when it
    did not answer within ``timeout`` (retransmitting after ``rto``, then twice as long each
    time).

    ``node_key`` is the supernode's ed25519 public key (or its 20-byte node id); answers
    signed by anyone else are ignored."""
    txn = BindingTransaction(identity, supernode_addr, node_key, timeout, time.monotonic(),
                             rto=rto)
    return await _run(media, txn)


async def nat_type(
    media: EnvelopePort, identity: Identity, supernodes: Sequence[tuple[Address, bytes]],
    timeout: float = 2.0, local: Address | None = None,
    rtts: Mapping[bytes, float] | None = None,
) -> NatReport:
    """Ask each ``(address, node_key)`` in ``supernodes`` (two of them, on different hosts,
    for a meaningful answer) at once from ``media``; classify the answers. ``rtts`` (by node
    key) sets each one's retransmissions and window (:func:`binding_timing`); ``timeout`` is
    the window for a supernode without one.

    ``local`` defaults to ``media.local_address``; pass the host address when the socket is
    bound to a wildcard address."""
    started = time.monotonic()
    timing = [binding_timing((rtts or {}).get(key), timeout) for _, key in supernodes]
    mapped = await asyncio.gather(*[
        reflexive_address(media, identity, addr, key, window, rto)
        for (addr, key), (rto, window) in zip(supernodes, timing, strict=True)])
    own = local or media.local_address
    return NatReport(classify(own, mapped), own, tuple(mapped), time.monotonic() - started)
