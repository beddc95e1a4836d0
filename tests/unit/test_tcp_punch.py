"""TCP hole punching: the decision (sans-IO :func:`overlay.media.tcp_punch.plan`: whether,
at which addresses, when), the technique it reports, and the asyncio part on real loopback
sockets (it connects from the media listener's own port while the listener keeps listening,
and the session id is checked both ways). The simultaneous open through real NATs is
tests/lab/test_tcp_punch_lab.py."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from overlay.media.errors import PathLost
from overlay.media.secure_stream import secure
from overlay.media.signalling import Candidates
from overlay.media.stream import MediaStream
from overlay.media.tcp_listener import MediaListener
from overlay.media.tcp_punch import AFTER_UDP_PUNCH_S, TcpPunchPlan, plan
from overlay.media.tcp_punch_io import EarlyPunches, punch_attempts, punch_tcp
from overlay.media.techniques import technique

ME = "198.18.1.2"
PEER_LAN, PEER_PUB = "198.18.9.2", "198.18.0.9"


def cands(nat: str, reachable: bool = False, tcp: tuple[tuple[str, int], ...] = (),
          mapped: tuple[tuple[str, int], ...] = ()) -> Candidates:
    return Candidates(tcp=tcp + mapped, nat=nat, reachable=reachable, mapped_tcp=mapped)


PEER_TCP = ((PEER_LAN, 4000), (PEER_PUB, 4000))


@pytest.mark.parametrize(("ours", "theirs"), [
    ("no-udp", "no-udp"), ("no-udp", "cone"), ("cone", "no-udp"), ("no-udp", "public"),
    ("public", "no-udp"), ("unknown", "no-udp"),
])
def test_punches_every_peer_candidate_when_neither_side_is_reachable(
        ours: str, theirs: str) -> None:
    p = plan(cands(ours), cands(theirs, tcp=PEER_TCP), (ME,), udp_punch_tried=False)
    assert p.targets == PEER_TCP
    assert p.delay_s == 0.0


@pytest.mark.parametrize(("local_reachable", "remote_reachable"),
                         [(True, False), (False, True), (True, True)])
def test_not_when_a_side_is_reachable(local_reachable: bool, remote_reachable: bool) -> None:
    p = plan(cands("no-udp", local_reachable), cands("cone", remote_reachable, PEER_TCP),
             (ME,), udp_punch_tried=False)
    assert p.targets == ()
    assert "plain dial" in p.reason


@pytest.mark.parametrize(("ours", "theirs"), [("symmetric", "no-udp"), ("no-udp", "symmetric"),
                                              ("symmetric", "symmetric")])
def test_not_through_a_symmetric_nat(ours: str, theirs: str) -> None:
    p = plan(cands(ours), cands(theirs, tcp=PEER_TCP), (ME,), udp_punch_tried=False)
    assert p.targets == ()
    assert "random port" in p.reason


def test_router_mappings_and_our_own_public_address_are_not_punched() -> None:
    mapping = ("198.18.0.44", 5000)
    p = plan(cands("no-udp"), cands("cone", tcp=PEER_TCP, mapped=(mapping,)), (ME,),
             udp_punch_tried=False)
    assert p.targets == PEER_TCP  # the mapping is dialled plainly
    same_lan = plan(cands("no-udp"), cands("cone", tcp=((PEER_LAN, 4000), (ME, 4000))),
                    (ME,), udp_punch_tried=False)
    assert same_lan.targets == ((PEER_LAN, 4000),)
    nothing = plan(cands("no-udp"), cands("cone", mapped=(mapping,)), (ME,),
                   udp_punch_tried=False)
    assert nothing.targets == ()


def test_only_public_addresses_are_punched() -> None:
    """No NAT stands between us and a loopback or private (same LAN) address: a plain dial
    reaches those, and a punch there would only meet the peer's listener."""
    local = ((("127.0.0.1", 4000), ("10.0.0.7", 4000), ("192.168.1.9", 4000),
              ("100.64.3.3", 4000)))
    p = plan(cands("no-udp"), cands("no-udp", tcp=(*local, (PEER_PUB, 4000))), (ME,),
             udp_punch_tried=False)
    assert p.targets == ((PEER_PUB, 4000),)


def test_waits_for_udp_punching_when_that_is_tried_too() -> None:
    p = plan(cands("cone"), cands("cone", tcp=PEER_TCP), (ME,), udp_punch_tried=True)
    assert p.targets == PEER_TCP
    assert p.delay_s == AFTER_UDP_PUNCH_S


def test_technique_of_a_punched_tcp_path() -> None:
    assert technique("tcp-punch-0", False) == "simultaneous-open"
    assert technique("tcp-punch-3", True) == "simultaneous-open"
    assert technique("tcp-dial-0", False) == "dial"


def test_attempts_are_named_per_target() -> None:
    p = plan(cands("no-udp"), cands("no-udp", tcp=PEER_TCP), (ME,), udp_punch_tried=False)
    assert sorted(punch_attempts(p, 4000, b"s" * 16)) == ["tcp-punch-0", "tcp-punch-1"]


async def _peer(answer: bytes, ended: asyncio.Queue[bytes] | None = None
                ) -> tuple[asyncio.Server, asyncio.Queue[tuple[str, int, bytes]]]:
    """A TCP peer on loopback that reads 16 bytes, answers ``answer`` and reports the
    connection's source address and what it read (and to ``ended`` what it read after
    that, once the puncher closes or resets the connection)."""
    seen: asyncio.Queue[tuple[str, int, bytes]] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        got = await reader.readexactly(16)
        writer.write(answer)
        await writer.drain()
        seen.put_nowait((host, port, got))
        try:
            rest = await reader.read()  # until the puncher closes
        except ConnectionResetError:
            rest = b""  # or resets: how a punch the race did not take is dropped
        if ended is not None:
            ended.put_nowait(rest)
        writer.close()

    return await asyncio.start_server(on_client, "127.0.0.1", 0), seen


async def test_connects_from_the_listening_port_and_checks_the_session_id() -> None:
    session = b"S" * 16
    listener = MediaListener()
    await listener.start("127.0.0.1", 0)
    server, seen = await _peer(session)
    try:
        stream = await punch_tcp(listener.port, "127.0.0.1",
                                 server.sockets[0].getsockname()[1], session)
        _, port, got = await asyncio.wait_for(seen.get(), 5)
        assert (port, got) == (listener.port, session)  # from the listener's own port
        assert stream.path == "tcp-punch"
        await stream.close()
        # the listener still takes connections on that port
        queue = listener.expect(b"T" * 16)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"T" * 16)
        accepted = await asyncio.wait_for(queue.get(), 5)
        await accepted.close()
        writer.close()
    finally:
        server.close()
        await listener.stop()


async def test_a_punch_that_reaches_the_peers_listener_is_its_accept_path() -> None:
    """The peer has no punching socket (its SYN came and went): our SYN reaches its listener,
    which routes our session id to its ``tcp-accept``; the peer speaks first there, and both
    ends still complete the authenticated handshake over that one connection."""
    session, secret, transcript = b"S" * 16, os.urandom(32), os.urandom(32)
    ours, peer = MediaListener(), MediaListener()
    await ours.start("127.0.0.1", 0)
    await peer.start("127.0.0.1", 0)
    accept = peer.expect(session)
    try:
        async def peer_side() -> MediaStream:
            raw = await asyncio.wait_for(accept.get(), 5)
            return await secure(raw, secret, transcript, False, 5)

        async def our_side() -> MediaStream:
            raw = await punch_tcp(ours.port, "127.0.0.1", peer.port, session)
            assert raw.path == "direct-tcp"
            return await secure(raw, secret, transcript, True, 5)

        a, b = await asyncio.gather(our_side(), peer_side())
        await a.send(b"through the listener")
        assert await b.recv() == b"through the listener"
        await a.close()
        await b.close()
    finally:
        await ours.stop()
        await peer.stop()


async def test_wrong_keys_on_a_reached_listener_fail_the_handshake() -> None:
    """Whatever answers at the punched address, only the session's keys authenticate."""
    session, transcript = b"S" * 16, os.urandom(32)
    ours, peer = MediaListener(), MediaListener()
    await ours.start("127.0.0.1", 0)
    await peer.start("127.0.0.1", 0)
    accept = peer.expect(session)
    try:
        async def peer_side() -> None:
            raw = await asyncio.wait_for(accept.get(), 5)
            with contextlib.suppress(Exception):
                await secure(raw, os.urandom(32), transcript, False, 2)
            await raw.close()

        async def our_side() -> None:
            raw = await punch_tcp(ours.port, "127.0.0.1", peer.port, session)
            with pytest.raises(PathLost):  # SecureStreamError (or the peer hanging up)
                await secure(raw, os.urandom(32), transcript, True, 2)

        await asyncio.gather(our_side(), peer_side())
    finally:
        await ours.stop()
        await peer.stop()


async def test_nothing_listening_fails_as_a_lost_path() -> None:
    listener = MediaListener()
    await listener.start("127.0.0.1", 0)
    closed = MediaListener()
    await closed.start("127.0.0.1", 0)
    port = closed.port
    await closed.stop()
    try:
        with pytest.raises(PathLost, match="failed"):
            await punch_tcp(listener.port, "127.0.0.1", port, b"S" * 16, timeout=3)
    finally:
        await listener.stop()


async def test_early_punches_run_before_the_race_and_untaken_ones_are_closed() -> None:
    """The callee starts punching as it sends its answer: the connection is under way before
    the race asks for it; the race gets that very stream, and one it never took is closed."""
    session = b"S" * 16
    listener = MediaListener()
    await listener.start("127.0.0.1", 0)
    ended: asyncio.Queue[bytes] = asyncio.Queue()
    server, seen = await _peer(session, ended)
    port = server.sockets[0].getsockname()[1]
    try:
        for take in (True, False):
            early = EarlyPunches()
            attempts = early.start(punch_attempts(
                TcpPunchPlan((("127.0.0.1", port),), 0.0, "loopback"), listener.port, session))
            await asyncio.wait_for(seen.get(), 5)  # connected without the race asking
            task = early.tasks["tcp-punch-0"]
            if take:
                stream = await attempts["tcp-punch-0"]()
                assert stream is await task
                early.release()
                await stream.send(b"still open")  # taken: release left it alone
                await stream.close()
                assert await asyncio.wait_for(ended.get(), 5) == b"still open"
            else:
                early.release()
                assert await asyncio.wait_for(ended.get(), 5) == b""  # closed for us
    finally:
        server.close()
        await listener.stop()

