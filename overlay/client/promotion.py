"""Promotion: a publicly reachable client becomes a supernode.

The decision is sans-IO (:class:`PromotionPolicy`): once attached, the client opens a listener
on TCP and UDP and asks its supernode to dial back to the client's *source* address (never an
address the client names). Only when both dial-backs succeed, and the client has been up for
``promote_after_s``, does it start a supernode on that port, with a node key of its own,
advertising the address the supernode saw; never with ``--no-supernode``. Every client checks,
``--no-supernode`` too: the TCP dial-back is also what its invites and answers say as
``reachable`` (others may dial it: a peer behind a symmetric NAT then does not start a relay
at once). A client behind NAT fails the dial-back and is never promoted; it asks again after
``recheck_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from overlay.attach import ReachabilityResult
from overlay.attach.adapter import ClientSession, SessionError
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.dht import DHTConfig, DHTNode
from overlay.node.daemon import NodeOptions, load_identity
from overlay.node.supernode import Supernode, SupernodeOptions
from overlay.node.tcp_service import TcpService

log = get_logger(__name__)


class Step(Enum):
    WAIT = "wait"  # not attached yet, or too early, or checked recently
    CHECK = "check"  # ask the supernode to dial back
    PROMOTE = "promote"


@dataclass(frozen=True)
class PromotionPolicy:
    enabled: bool
    promote_after_s: float = 600.0
    recheck_s: float = 600.0

    def decide(
        self,
        *,
        uptime_s: float,
        attached: bool,
        last_check: ReachabilityResult | None,
        since_check_s: float,
    ) -> Step:
        if not attached:
            return Step.WAIT
        if last_check is None or since_check_s >= self.recheck_s:
            return Step.CHECK
        if not self.enabled:  # opted out: checked (reachable), never promoted
            return Step.WAIT
        if last_check.tcp_ok and last_check.udp_ok:
            return Step.PROMOTE if uptime_s >= self.promote_after_s else Step.WAIT
        return Step.WAIT


class DialBackListener:
    """What a supernode's dial-back reaches: a TCP probe answerer and a UDP DHT responder,
    both on one port, the DHT one signing with the client's own key (a client's: its id need
    not solve the id puzzle, and it says so with the client flag, so no table takes it)."""

    def __init__(self, identity: Identity) -> None:
        self.dht = DHTNode(identity, DHTConfig(refresh_interval_s=3600, client=True))
        self.tcp = TcpService(Identity.generate(), self.dht)

    async def start(self, host: str, port: int) -> int:
        await self.dht.start(host, port)
        bound = self.dht.address[1]
        try:
            await self.tcp.start(host, bound)
        except OSError:
            self.dht.stop()
            raise
        return bound

    async def stop(self) -> None:
        await self.tcp.stop()
        self.dht.stop()


@dataclass
class PromotionState:
    last_check: ReachabilityResult | None = None
    checked_at: float = float("-inf")
    promoted: Supernode | None = None
    port: int = 0


class Promoter:
    """Runs the policy for a client daemon; the daemon hands it its primary session."""

    def __init__(
        self,
        identity: Identity,
        policy: PromotionPolicy,
        listen_port: int,
        state_dir: Path | None,
        bootstrap: list[tuple[str, int]],
    ) -> None:
        self.identity = identity
        self.policy = policy
        self.listen_port = listen_port
        self.state_dir = state_dir
        self.bootstrap = bootstrap
        self.state = PromotionState()
        self.started = time.monotonic()

    def status(self) -> dict[str, object]:
        check = self.state.last_check
        return {
            "enabled": self.policy.enabled,
            "promoted": self.state.promoted is not None,
            "reachable": None if check is None else {
                "host": check.host, "tcp": check.tcp_ok, "udp": check.udp_ok},
            "supernode": "{}:{}".format(*self.state.promoted.advertised)
            if self.state.promoted else None,
        }

    async def step(self, session: ClientSession | None) -> Step:
        now = time.monotonic()
        step = self.policy.decide(
            uptime_s=now - self.started,
            attached=session is not None and not session.closed,
            last_check=self.state.last_check,
            since_check_s=now - self.state.checked_at,
        )
        if step is Step.CHECK and session is not None:
            await self._check(session)
        elif step is Step.PROMOTE and session is not None and self.state.promoted is None:
            await self._promote(session)
        return step

    async def _check(self, session: ClientSession) -> None:
        self.state.checked_at = time.monotonic()
        sockname = session.proto.transport.get_extra_info("sockname") if \
            session.proto.transport else None
        if not sockname:
            return
        listener = DialBackListener(self.identity)
        try:
            self.state.port = await listener.start(str(sockname[0]), self.listen_port)
        except OSError as exc:
            log.warning("promotion_listener_failed", error=str(exc))
            return
        try:
            result = await session.check_reachability(self.state.port)
        except SessionError as exc:
            log.info("reachability_check_failed", error=str(exc))
            return
        finally:
            await listener.stop()
        self.state.last_check = result
        log.info("reachability", host=result.host, port=self.state.port, tcp=result.tcp_ok,
                 udp=result.udp_ok,
                 promotable=result.tcp_ok and result.udp_ok)

    async def _promote(self, session: ClientSession) -> None:
        check = self.state.last_check
        assert check is not None
        sockname = session.proto.transport.get_extra_info("sockname") if \
            session.proto.transport else None
        if not sockname:
            return
        node_state = self.state_dir / "supernode" if self.state_dir is not None else None
        supernode_addr = session.proto.peer
        opts = NodeOptions(
            listen=(str(sockname[0]), self.state.port),
            bootstrap=[supernode_addr, *self.bootstrap],
            advertise=(check.host, self.state.port),
            state_dir=node_state,
        )
        # a supernode's id must solve the DHT's id puzzle (~1 s): ground off the event loop
        identity = await asyncio.to_thread(load_identity, opts)
        node = Supernode(opts, SupernodeOptions(max_clients=1000), identity)
        try:
            await node.start()
        except OSError as exc:
            log.warning("promotion_failed", error=str(exc))
            self.state.last_check = None
            return
        self.state.promoted = node
        log.info("promoted_to_supernode", address="{}:{}".format(*node.advertised),
                 node_id=node.identity.node_id.hex())

    async def stop(self) -> None:
        if self.state.promoted is not None:
            with contextlib.suppress(Exception):
                await self.state.promoted.stop()


async def run(promoter: Promoter, current: object, stopping: asyncio.Event,
              attached: asyncio.Event, interval: float = 1.0) -> None:
    """Drive ``promoter`` until ``stopping``; ``current()`` returns the primary session. A
    step is taken every ``interval``, and at once when the client attaches (``attached`` set):
    the first dial-back, and so ``reachable`` in its invites and answers, does not wait for
    the next tick."""
    while not stopping.is_set():
        session = current()  # type: ignore[operator]
        try:
            await promoter.step(session)
        except Exception:
            log.exception("promotion_step_failed")
        if promoter.state.promoted is not None:
            return
        waits = [asyncio.ensure_future(stopping.wait())]
        if not attached.is_set():
            waits.append(asyncio.ensure_future(attached.wait()))
        try:
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
