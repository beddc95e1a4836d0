"""A call's race holds at most one spare relay session (each reserves budget at a relay):
when several relay paths complete before the race selects, the initiator keeps the one
selected and one spare at another supernode, and drops the others at once; once it holds a
spare, the relay attempts still running stop. It used to keep every relay path that
completed before the selection as a spare: a relayed call held all three relays of
``tests/process/test_call_udp_relay.py``, and the next call was refused for budget by each
(a CI failure). Real loopback TCP connections stand in for the relay paths (the race's
bookkeeping is under test, not the relays)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from overlay.media.connect import Timeline, connect_as_initiator, connect_as_responder
from overlay.media.errors import PEER_HOLDS_SPARE
from overlay.media.late_paths import LateDirect
from overlay.media.relay_udp import udp_relay_attempt
from overlay.media.selection import SELECT
from overlay.media.stream import MediaStream
from overlay.relay.admission import RelayAdmission
from overlay.relay.budget import Budget, BudgetConfig
from overlay.relay.datagram import DatagramRelay
from overlay.relay.datagram_io import start_datagram_relay
from tests.helpers.netutil import loopback_ips, wait_for
from tests.helpers.stream_pairs import ended, tcp_stream_pair, unsecured

NOW = {"relay-udp-0": 0.0, "relay-udp-1": 0.0, "relay-udp-2": 0.0}


class Together:
    """Attempts that complete in one turn of the loop, once ``n`` of them have started (three
    relays that pair within a millisecond, as on loopback)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = 0
        self.go = asyncio.Event()

    def attempt(self, stream: MediaStream) -> Callable[[], Awaitable[MediaStream]]:
        async def run() -> MediaStream:
            self.arrive()
            await self.go.wait()
            return stream
        return run

    def arrive(self) -> None:
        self.started += 1
        if self.started == self.n:
            self.go.set()


async def test_relay_paths_done_before_the_selection_leave_one_spare() -> None:
    pairs = [await tcp_stream_pair(path="relay") for _ in range(3)]
    together = Together(3)
    late = LateDirect(None, keep_relays=True)
    winner, timeline = await connect_as_initiator(
        {name: together.attempt(ours) for name, (ours, _) in zip(NOW, pairs, strict=True)},
        unsecured, timeout=10.0, staggers=NOW, late=late)
    assert sum(1 for _, event in timeline.events if event.endswith("authenticated")) == 3
    ours = [o for o, _ in pairs]
    (spare_name, spare_stream), = late.spares
    assert spare_name != timeline.selected
    far = {name: pairs[ours.index(o)][1] for name, o in
           ((timeline.selected, winner), (spare_name, spare_stream))}
    dropped_name, = set(NOW) - set(far)
    dropped = pairs[list(NOW).index(dropped_name)][1]
    assert await asyncio.wait_for(far[timeline.selected].recv(len(SELECT)), 5.0) == SELECT
    # the third relay's path is closed at once (its far end reads the end
    # of the stream, or the reset a discarded TCP path ends with)
    assert await ended(dropped)
    # the spare stays open
    await spare_stream.send(b"keep")
    assert await asyncio.wait_for(far[spare_name].recv(4), 5.0) == b"keep"
    late.close()
    assert await ended(far[spare_name])
    for ours, far in pairs:
        await ours.close()
        await far.close()


async def test_relay_attempts_still_running_stop_once_a_spare_is_held() -> None:
    pairs = [await tcp_stream_pair(path="relay") for _ in range(2)]
    stopped = asyncio.Event()

    async def slow() -> MediaStream:  # a relay binding still waiting for its callee
        together.arrive()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.set()  # udp_relay_attempt RELEASEs its binding here
            raise
        raise AssertionError("not reached")

    together = Together(3)
    late = LateDirect(None, keep_relays=True)
    await connect_as_initiator(
        {"relay-udp-0": together.attempt(pairs[0][0]),
         "relay-udp-1": together.attempt(pairs[1][0]), "relay-udp-2": slow},
        unsecured, timeout=10.0, staggers=NOW, late=late)
    assert len(late.spares) == 1
    await asyncio.wait_for(stopped.wait(), 5.0)
    late.close()
    for ours, far in pairs:
        await ours.close()
        await far.close()


# -- the callee's side --------------------------------------------------------------------------


class CalleeRace:
    """The callee's race of a call: two relay paths (real loopback TCP) the caller completes,
    and the callee's half at a real datagram relay that the caller never binds (its token is
    unknown there: the callee is told "not yet" and asks again)."""

    def __init__(self, names: tuple[str, str]) -> None:
        self.names = names
        self.peer_holds_spare = asyncio.Event()
        self.late = LateDirect(None, keep_relays=True)

    async def run(self) -> Timeline:
        config = BudgetConfig(total_bps=10_000_000)
        relay = DatagramRelay(config, Budget(config, time.monotonic()), RelayAdmission(config))
        self.relay = relay
        endpoint = await start_datagram_relay(relay, loopback_ips(1)[0], 0)
        self.pairs = [await tcp_stream_pair(path="relay") for _ in self.names]
        host, port = endpoint.address
        asking = udp_relay_attempt(host, port, b"\x07" * 32, os.urandom(32), False, 64_000,
                                   stop_pairing=self.peer_holds_spare)
        def told_not_yet() -> bool:
            return relay.stats.refused["unknown token"] >= 1

        # the second path completes once the third is asking its relay (told "not yet")
        attempts = {self.names[0]: ready(self.pairs[0][0]),
                    self.names[1]: ready(self.pairs[1][0], after=told_not_yet),
                    "relay-udp-2": asking}
        await self.pairs[0][1].send(SELECT)  # the caller's SELECT on the first; the other waits
        try:
            _, timeline = await connect_as_responder(
                attempts, unsecured, timeout=10.0, staggers=dict.fromkeys(attempts, 0.0),
                late=self.late, peer_holds_spare=self.peer_holds_spare)
            assert timeline.selected == self.names[0]
            await wait_for(lambda: any(e == f"{self.names[1]}: authenticated"
                                       for _, e in timeline.events), 5.0)
            return timeline
        finally:
            self.endpoint = endpoint

    async def close(self) -> None:
        self.late.close()
        self.endpoint.close()
        for ours, far in self.pairs:
            await ours.close()
            await far.close()


def ready(stream: MediaStream, after: Callable[[], bool] | None = None
          ) -> Callable[[], Awaitable[MediaStream]]:
    async def run() -> MediaStream:
        if after is not None:
            await wait_for(after, 5.0, interval=0.01)
        return stream
    return run


def failed(timeline: Timeline, name: str) -> str | None:
    return next((e.partition("failed (")[2][:-1] for _, e in timeline.events
                 if e.startswith(f"{name}: failed")), None)


async def test_the_callee_stops_asking_relays_once_the_caller_holds_its_spare() -> None:
    # the caller's call is on relay 0 and its spare at relay 1: it makes no more relay
    # sessions, so the callee's half at relay 2 stops asking (it asked for 8 s before)
    race = CalleeRace(("relay-udp-0", "relay-udp-1"))
    try:
        timeline = await race.run()
        assert race.peer_holds_spare.is_set()
        await wait_for(lambda: failed(timeline, "relay-udp-2") is not None, 3.0)
        assert failed(timeline, "relay-udp-2") == PEER_HOLDS_SPARE
    finally:
        await race.close()


async def test_a_relay_path_at_the_same_supernode_is_no_spare() -> None:
    # relay 0's TCP relay beside the call on relay 0's datagram relay: the caller drops it (a
    # spare at the same supernode dies with it), so the callee's half at relay 2 asks on
    race = CalleeRace(("relay-udp-0", "relay-0"))
    try:
        timeline = await race.run()
        assert any(e == "relay-0: authenticated" for _, e in timeline.events)
        assert not race.peer_holds_spare.is_set()
        assert failed(timeline, "relay-udp-2") is None
    finally:
        await race.close()
