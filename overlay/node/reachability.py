"""How clients learn whether (and where) they are reachable from outside.

- ``ReachabilityRequest`` over an attached session: the supernode dials back to the session's
  own source IP (never to an address the client names), on TCP (a probe must be answered) and
  UDP (a DHT ping answered by the client's key), at most once per
  :data:`RECHECK_INTERVAL_S` per session.
- DHT method ``binding``: the address a datagram came from (reflexive address, and the round
  trip other supernodes time for their Vivaldi coordinates).
"""

from __future__ import annotations

import time

from overlay.attach import ReachabilityRequest, ReachabilityResult
from overlay.attach.adapter import SessionError, probe
from overlay.core.identity import Identity, node_id_for
from overlay.core.logs import get_logger
from overlay.dht import DHTNode
from overlay.node.tcp_service import ServedSession, TcpService

log = get_logger(__name__)

#: one dial-back check per session at most this often
RECHECK_INTERVAL_S = 30.0


class ReachabilityChecker:
    def __init__(self, identity: Identity, dht: DHTNode, tcp: TcpService) -> None:
        self.identity = identity
        self.dht = dht
        self.tcp = tcp

    async def check(self, session: ServedSession, msg: ReachabilityRequest) -> None:
        """Dial back to the session's source IP at ``msg.port`` and answer what worked."""
        assert session.result is not None
        ip = session.proto.peer[0]
        now = time.monotonic()
        if (session.attached is None
                or now - session.last_reachability_check < RECHECK_INTERVAL_S):
            self.tcp.cut_off(session, "reachability checks need an attached session, "
                             "at most one per 30 s", "rate_limited")
            return
        session.last_reachability_check = now
        try:
            await probe(ip, msg.port, self.identity, timeout=2.0, count=1)
            tcp_ok = True
        except SessionError:
            tcp_ok = False
        try:
            await self.dht.call((ip, msg.port), "ping",
                                node_id=node_id_for(session.result.client_key))
            udp_ok = True
        except TimeoutError:
            udp_ok = False
        # peer: the address dialled back (the session's IP, the port the client named)
        session.bind(log).info("reachability_checked", peer=f"{ip}:{msg.port}",
                               tcp=tcp_ok, udp=udp_ok)
        session.proto.send(ReachabilityResult(msg.request_id, ip, tcp_ok, udp_ok))


def answer_binding(addr: tuple[str, int], sender_key: bytes, args: list[object]) -> object:
    """DHT method "binding": tell the sender the address its datagram came from."""
    return {"host": addr[0], "port": addr[1]}
