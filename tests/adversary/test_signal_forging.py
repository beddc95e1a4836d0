"""Signalling only from attached users (issue 11, flaw 2), attacked over loopback.

A real overlay (``overlay bootstrap`` + two ``overlay supernode`` processes), bob as a real
``overlay client`` with ``--inbox``, and alice, a genuine user attached to the supernode that
is not bob's. The attackers have only their own keys and the documented wire format of the
DHT method ``signal``: ``[from_user, from_device, from_key, to_user, to_device, payload]``,
answered ``{"ok": bool, "reason": str}``.

1. A DHT node of its own that never attached anywhere sends 300 signals "from alice" to bob's
   supernode: every one is refused with a reason, bob's inbox stays empty, bob's client logs
   nothing from "alice" but the genuine signals, and the supernode's ``/metrics`` counts the
   refusals by reason.
2. A node that registered itself as a supernode in the directory forges a signal from alice
   whose invite alice did not sign (refused ``bad_invite``), and one signed by a key that is
   not alice's (refused ``not_owner``).
3. Genuine alice, attached, bursts signals to bob: the first ``per_caller_burst`` are
   delivered, the rest refused ``rate_caller``.
4. Straight to bob's supernode over TCP, a session that never attached and a lookup-only one
   send a Signal: both are cut off and bob gets nothing (this held before issue 11 already).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from overlay.attach.adapter import ClientSession, SessionError
from overlay.attach.messages import CLIENT_SENDS
from overlay.client.control import ControlSocketError, control_request_async
from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.offers import INVITE_DOMAIN
from overlay.dht import DHTConfig, DHTNode
from overlay.node.tcp_service import TcpService
from tests.helpers.daemons import Daemon, http_text, parse_metrics
from tests.helpers.netutil import loopback_ips, wait_for
from tests.helpers.node_keys import production_identity
from tests.helpers.overlay_net import ProcessOverlay

REFUSED = "overlay_signals_refused_total"
#: the documented default limit per caller key (docs/ARCHITECTURE.md, DHT method ``signal``)
PER_CALLER_BURST = 20
PER_CALLER_RATE = 0.5
#: the reasons a receiving supernode gives (docs/ARCHITECTURE.md, DHT method ``signal``)
REASONS = {"malformed", "rate_forwarder", "not_supernode", "bad_invite", "not_owner",
           "rate_caller", "rate_target", "not_attached"}


def offer(signer: Identity, body: bytes) -> bytes:
    """The outer form of an invite (``msgpack([body, sig])``), signed by ``signer``."""
    wire: bytes = msgpack.packb([body, signer.sign(INVITE_DOMAIN + body)], use_bin_type=True)
    return wire


def lines_from(daemon: Daemon, user: str) -> list[dict[str, Any]]:
    """Log events of ``daemon`` that name ``user`` as the sender or peer of something."""
    return [e for e in daemon.log_entries() if user in (e.get("from_user"), e.get("peer"))]


async def refusals(http: str) -> dict[str, float]:
    metrics = parse_metrics(await http_text(f"http://{http}/metrics"))
    prefix = f'{REFUSED}{{reason="'
    return {k[len(prefix):-2]: v for k, v in metrics.items() if k.startswith(prefix)}


@dataclass
class World:
    net: ProcessOverlay
    boot: tuple[str, int]
    bob: Daemon
    inbox: Path
    #: bob's supernode: its DHT/TCP address and HTTP address
    bob_sn: tuple[str, int]
    bob_sn_http: str
    alice: Identity
    alice_session: ClientSession
    spare_ips: list[str]


async def connect_lookup(host: str, port: int) -> ClientSession:
    return await ClientSession.connect(host, port, Identity.generate(), expected_node_key=None,
                                       lookup_only=True)


async def directory_keys(host: str, port: int) -> set[bytes]:
    try:
        session = await connect_lookup(host, port)
    except SessionError:
        return set()
    try:
        return {s.record.node_key for s in await session.directory()
                if isinstance(s.record, records.SupernodeRecord)}
    except SessionError:
        return set()
    finally:
        session.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    net = await ProcessOverlay(tmp_path, 2, ["--heartbeat", "1"]).start()
    started: list[Daemon] = []
    sessions: list[ClientSession] = []
    try:
        boot_host, boot_port = net.bootstrap_addr.split(":")
        boot = (boot_host, int(boot_port))
        await wait_for(lambda: _count(directory_keys(*boot), 2), timeout=20, interval=0.2)

        inbox = tmp_path / "bob-inbox"
        inbox.mkdir()
        sock = tmp_path / "bob.sock"
        bob = Daemon(["client", "--user", "bob", "--device", "laptop",
                      "--key", str(tmp_path / "bob.key"), "--state-dir", str(tmp_path / "bob"),
                      "--control", str(sock), "--inbox", str(inbox),
                      "--bootstrap", net.bootstrap_addr, "--no-supernode",
                      "--heartbeat", "0.5", "--presence-refresh", "2"],
                     tmp_path / "bob.log").start()
        started.append(bob)
        status: dict[str, Any] = {}

        async def bob_attached() -> bool:
            nonlocal status
            try:
                status = await control_request_async(sock, {"cmd": "status"}, timeout=5)
            except ControlSocketError:
                return False
            return bool(status.get("ok") and status.get("supernode"))

        await wait_for(bob_attached, timeout=20, interval=0.2)
        addrs = [net.supernode_addr(i) for i in range(2)]
        mine = addrs.index(status["supernode"]["address"])
        other_host, other_port = addrs[1 - mine].split(":")
        other_key = next(s.record.node_key for s in await _directory(*boot)
                         if isinstance(s.record, records.SupernodeRecord)
                         and s.record.host == other_host)

        alice = Identity.generate()
        session = await ClientSession.connect(other_host, int(other_port), alice,
                                              expected_node_key=other_key, user="alice",
                                              device="laptop")
        sessions.append(session)
        await session.attach(records.presence(alice, "alice", "laptop", seq=1,
                                              supernode_key=other_key,
                                              supernode_host=other_host,
                                              supernode_port=int(other_port)))

        async def bob_visible() -> bool:
            return any(s.record.online for s in await session.lookup("bob"))

        await wait_for(bob_visible, timeout=15, interval=0.2)
        bob_host, bob_port = addrs[mine].split(":")
        yield World(net, boot, bob, inbox, (bob_host, int(bob_port)), net.http(mine), alice,
                    session, loopback_ips(2))
    finally:
        for s in sessions:
            s.close()
        for d in started:
            d.kill()
        net.stop()


async def _count(keys: Any, n: int) -> bool:
    return len(await keys) >= n


async def _directory(host: str, port: int) -> list[records.SignedRecord]:
    session = await connect_lookup(host, port)
    try:
        return await session.directory()
    finally:
        session.close()


async def stranger(world: World, ip: str) -> DHTNode:
    """A DHT node with a key of its own (its id solves the id puzzle, ~1 s: it may store and
    be routed to), joined through the bootstrap node."""
    node = DHTNode(production_identity(), DHTConfig())
    await node.start(ip, 0)
    await node.bootstrap([world.boot])
    return node


async def genuine_signal(world: World, n: int) -> None:
    """Alice's signed signal to bob is delivered (retried while bob's supernode looks alice
    up: the first one of a new sender is answered "checking")."""
    body = f"genuine {n}".encode()

    async def delivered() -> bool:
        result = await world.alice_session.signal("bob", offer(world.alice, body),
                                                  to_device="laptop")
        return result.ok

    await wait_for(delivered, timeout=15, interval=0.3)


async def test_a_stranger_cannot_signal_as_alice(world: World) -> None:
    # a genuine signal first: what bob logs for one delivered signal from alice
    await genuine_signal(world, 1)
    await wait_for(lambda: len(lines_from(world.bob, "alice")) > 0, timeout=10)
    per_signal = len(lines_from(world.bob, "alice"))

    mallory = await stranger(world, world.spare_ips[0])
    try:
        # bob's supernode may first answer "checking" while it reads the directory for
        # mallory's shard (at most one read per window); she asks again until it has
        async def refused_outright() -> bool:
            reply = await mallory.call(world.bob_sn, "signal", "alice", "laptop",
                                       world.alice.public_key, "bob", "laptop", b"{}")
            return isinstance(reply, dict) and reply.get("reason") != "checking"

        await wait_for(refused_outright, timeout=10)
        replies: list[object] = []
        started = time.monotonic()
        for batch in range(15):
            calls = []
            for i in range(batch * 20, batch * 20 + 20):
                if i % 2:  # claims alice's name with its own key and a self-signed invite
                    args = ["alice", "laptop", mallory.identity.public_key, "bob", "laptop",
                            offer(mallory.identity, b"forged %d" % i)]
                else:  # claims alice's name and key, with a payload nobody signed
                    args = ["alice", "laptop", world.alice.public_key, "bob", "laptop",
                            b'{"text": "hello bob, this is alice %d"}' % i]
                calls.append(mallory.call(world.bob_sn, "signal", *args))
            replies.extend(await asyncio.gather(*calls))
        elapsed = time.monotonic() - started
    finally:
        mallory.stop()

    assert len(replies) == 300
    accepted = [r for r in replies if not (isinstance(r, dict) and r.get("ok") is False)]
    assert not accepted, f"{len(accepted)}/300 forged signals accepted in {elapsed:.2f}s"
    assert all(isinstance(r, dict) and r.get("reason") in REASONS for r in replies)

    # a second genuine signal: anything delivered before it reached bob before it, in order
    await genuine_signal(world, 2)
    await wait_for(lambda: len(lines_from(world.bob, "alice")) >= 2 * per_signal, timeout=10)
    assert len(lines_from(world.bob, "alice")) == 2 * per_signal
    assert sorted(p.name for p in world.inbox.iterdir()) == []
    assert not world.bob.events("signal_received")

    # /metrics counts every refusal by its reason ("checking" is not one: ask again)
    counted = await refusals(world.bob_sn_http)
    given = Counter(r["reason"] for r in replies
                    if isinstance(r, dict) and r["reason"] != "checking")
    assert given["not_supernode"] > 0, given
    assert all(counted.get(reason, 0) >= n for reason, n in given.items()), (counted, given)
    assert set(counted) <= REASONS, counted


async def test_a_registered_supernode_cannot_forge_alices_invite(world: World) -> None:
    mallory = await stranger(world, world.spare_ips[0])
    host, port = mallory.address
    # a supernode is listed once its address proves its key (a dial-back): mallory serves
    # the attachment handshake there with her key
    tcp = TcpService(mallory.identity, mallory)
    await tcp.start(host, port)
    try:
        await mallory.put(records.supernode(mallory.identity, host, port, seq=1))
        await wait_for(
            lambda: _has(directory_keys(*world.boot), mallory.identity.public_key),
            timeout=15, interval=0.2)

        async def decided(args: list[object]) -> object:
            """The answer once bob's supernode has looked mallory and alice up (it answers
            "checking" meanwhile, and "not_supernode" until its directory read sees mallory's
            record)."""
            reply: object = None

            async def answered() -> bool:
                nonlocal reply
                reply = await mallory.call(world.bob_sn, "signal", *args)
                return not (isinstance(reply, dict)
                            and reply.get("reason") in ("checking", "not_supernode"))

            await wait_for(answered, timeout=15, interval=0.3)
            return reply

        # alice's name and key, an invite alice never signed (signed by mallory)
        unsigned = await decided(["alice", "laptop", world.alice.public_key, "bob", "laptop",
                                  offer(mallory.identity, b"not alice's")])
        assert unsigned == {"ok": False, "reason": "bad_invite"}
        # alice's name, mallory's own user key and a valid signature by it
        impostor = Identity.generate()
        wrong_key = await decided(["alice", "laptop", impostor.public_key, "bob", "laptop",
                                   offer(impostor, b"I am alice")])
        assert wrong_key == {"ok": False, "reason": "not_owner"}
    finally:
        await tcp.stop()
        mallory.stop()

    assert lines_from(world.bob, "alice") == []
    assert list(world.inbox.iterdir()) == []
    counted = await refusals(world.bob_sn_http)
    assert counted.get("bad_invite", 0) >= 1 and counted.get("not_owner", 0) >= 1, counted


async def _has(keys: Any, key: bytes) -> bool:
    return key in await keys


async def test_a_genuine_caller_is_limited_after_its_burst(world: World) -> None:
    burst = PER_CALLER_BURST
    await genuine_signal(world, 0)  # the first one may wait for bob's supernode's checks
    started = time.monotonic()
    results = [await world.alice_session.signal("bob", offer(world.alice, b"burst %d" % i),
                                                to_device="laptop")
               for i in range(burst + 10)]
    elapsed = time.monotonic() - started
    ok = [r.ok for r in results]
    refill = PER_CALLER_RATE * elapsed
    # the bucket held `burst` tokens and the genuine signal above took one of them
    assert all(ok[: burst - 1]), ok
    assert sum(ok) <= burst - 1 + refill + 1, (ok, elapsed)
    refused = [r.reason for r in results if not r.ok]
    assert len(refused) >= 10 - refill - 1, (ok, elapsed)
    assert all("rate_caller" in reason for reason in refused), refused
    counted = await refusals(world.bob_sn_http)
    assert counted.get("rate_caller", 0) >= len(refused), counted


async def test_only_an_attached_session_can_signal(world: World) -> None:
    """Straight to bob's own supernode over TCP: a session that completed the handshake as
    "alice" (with mallory's key) but never attached, and a lookup-only session that sends a
    Signal anyway (its own client code patched), are both cut off; bob gets nothing."""
    host, port = world.bob_sn
    node_key = next(s.record.node_key for s in await _directory(*world.boot)
                    if isinstance(s.record, records.SupernodeRecord) and s.record.host == host)
    mallory = Identity.generate()
    unattached = await ClientSession.connect(host, port, mallory, expected_node_key=node_key,
                                             user="alice", device="laptop")
    lookup = await ClientSession.connect(host, port, mallory, expected_node_key=node_key,
                                         lookup_only=True)
    try:
        with pytest.raises(SessionError):
            await unattached.signal("bob", offer(mallory, b"unattached"), to_device="laptop",
                                    timeout=5)
        assert lookup.proto.conn is not None
        lookup.proto.conn._may_send = lambda: CLIENT_SENDS  # type: ignore[method-assign]
        with pytest.raises(SessionError):
            await lookup.signal("bob", offer(mallory, b"lookup only"), to_device="laptop",
                                timeout=5)
    finally:
        unattached.close()
        lookup.close()
    await wait_for(lambda: unattached.closed and lookup.closed, timeout=5)
    # two genuine signals after them: a forged one delivered before would be logged before
    # the first, so bob's lines from "alice" would not double with the second
    await genuine_signal(world, 3)
    await wait_for(lambda: len(lines_from(world.bob, "alice")) > 0, timeout=10)
    first = len(lines_from(world.bob, "alice"))
    await genuine_signal(world, 4)
    await wait_for(lambda: len(lines_from(world.bob, "alice")) > first, timeout=10)
    assert len(lines_from(world.bob, "alice")) == 2 * first
    assert list(world.inbox.iterdir()) == []
    cut = parse_metrics(await http_text(f"http://{world.bob_sn_http}/metrics"))
    assert cut.get('overlay_sessions_cut_off_total{reason="not_attached"}', 0) >= 1, cut


async def test_a_held_signal_is_delivered_once_checked_and_a_forged_one_never(
        world: World) -> None:
    """Bob's supernode answers a new sender's signal "checking" and holds it while it looks
    the sender up. A registered supernode (mallory's) asks once and never again: its own
    user carol's genuine signal reaches bob as soon as the check passes (once, even when
    asked again afterwards), while a signal "from alice" signed by another key, held the same
    way, never does."""
    mallory = await stranger(world, world.spare_ips[0])
    host, port = mallory.address
    tcp = TcpService(mallory.identity, mallory)
    await tcp.start(host, port)
    try:
        await mallory.put(records.supernode(mallory.identity, host, port, seq=1))
        await wait_for(
            lambda: _has(directory_keys(*world.boot), mallory.identity.public_key),
            timeout=15, interval=0.2)
        carol = Identity.generate()
        await mallory.put(records.presence(carol, "carol", "laptop", seq=1,
                                           supernode_key=mallory.identity.public_key,
                                           supernode_host=host, supernode_port=port))
        impostor = Identity.generate()
        forged = ["alice", "laptop", impostor.public_key, "bob", "laptop",
                  offer(impostor, b"I am alice")]
        genuine = ["carol", "laptop", carol.public_key, "bob", "laptop",
                   offer(carol, b"hello bob, this is carol")]

        async def first_answer(args: list[object]) -> object:
            """The first answer past "not_supernode" (bob's supernode has not read mallory's
            record yet: nothing is held then)."""
            reply: object = None

            async def answered() -> bool:
                nonlocal reply
                reply = await mallory.call(world.bob_sn, "signal", *args)
                return not (isinstance(reply, dict) and reply.get("reason") == "not_supernode")

            await wait_for(answered, timeout=15, interval=0.3)
            return reply

        assert (await first_answer(forged))["reason"] in ("checking", "not_owner")
        # carol is new to bob's supernode: looked up, meanwhile held
        assert await first_answer(genuine) == {"ok": False, "reason": "checking"}
        await wait_for(lambda: len(lines_from(world.bob, "carol")) > 0, timeout=10)
        delivered = len(lines_from(world.bob, "carol"))
        assert await mallory.call(world.bob_sn, "signal", *genuine) == {"ok": True,
                                                                       "reason": ""}
        # the forged one was decided long before: asked again, it is refused as not alice's
        assert await mallory.call(world.bob_sn, "signal", *forged) == {"ok": False,
                                                                      "reason": "not_owner"}
    finally:
        await tcp.stop()
        mallory.stop()
    assert len(lines_from(world.bob, "carol")) == delivered
    assert lines_from(world.bob, "alice") == []
    assert list(world.inbox.iterdir()) == []
