"""Relay first, upgrade later (issue 13): the decisions (:mod:`overlay.media.move_rules`,
:func:`overlay.media.direct_paths.plan` with ``upgrade``), and a file transfer that starts on a
real supernode's relay (1 Mbit/s per session) and moves mid-transfer to a direct TCP path that
completes a second later, both sides' races and moves as the media service runs them: the
received file's sha256 is the sent one's, and the receiver resumed where its data ended."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from overlay.core.identity import Identity
from overlay.media import move_rules
from overlay.media.connect import (
    connect_as_initiator,
    connect_as_responder,
)
from overlay.media.direct_paths import UPGRADE_WINDOW_S, plan
from overlay.media.inbox_limits import InboxGuard
from overlay.media.late_paths import LateDirect
from overlay.media.path_move import Moving
from overlay.media.signalling import transcript_hash
from overlay.media.transfer import PartialStore
from tests.helpers.loopback_pair import loopback_pair
from tests.helpers.stream_pairs import direct_tcp_attempts
from tests.unit.test_direct_paths import KIND_CANDIDATES
from tests.unit.test_relay_vouchers import offers, relay_supernode, services

LEGS: tuple[move_rules.Leg, ...] = ("running", "done", "lost")
UPGRADES: tuple[move_rules.Upgrade, ...] = ("ready", "pending", "none")


def test_the_sender_moves_only_while_it_still_sends_data() -> None:
    table = {(leg, up, all_sent): move_rules.sender_step(leg, up, all_sent)
             for leg in LEGS for up in UPGRADES for all_sent in (False, True)}
    # a finished relay leg (done, or refused: not the path's fault) is the outcome
    assert {s for (leg, _, _), s in table.items() if leg == "done"} == {"finish"}
    # while data still goes out, a ready direct path takes over at once
    assert table[("running", "ready", False)] == "move"
    # once every byte went out, END may be on the relay: wait for its ACK there
    assert table[("running", "ready", True)] == "wait"
    assert {table[("running", up, s)] for up in ("pending", "none") for s in (False, True)} \
        == {"wait"}
    # a lost relay (the receiver moved first, or the relay died) moves when a path is there,
    # waits for one still running, and fails as before when none completed
    for all_sent in (False, True):
        assert table[("lost", "ready", all_sent)] == "move"
        assert table[("lost", "pending", all_sent)] == "wait"
        assert table[("lost", "none", all_sent)] == "finish"


def test_the_receiver_moves_only_after_its_relay_read_ended() -> None:
    assert move_rules.receiver_step("done", "ready") == "finish"
    assert move_rules.receiver_step("lost", "ready") == "move"
    assert move_rules.receiver_step("lost", "pending") == "wait"
    assert move_rules.receiver_step("lost", "none") == "finish"
    assert {move_rules.receiver_step("running", up) for up in UPGRADES} == {"wait"}


@pytest.mark.parametrize("a", tuple(KIND_CANDIDATES))
@pytest.mark.parametrize("b", tuple(KIND_CANDIDATES))
def test_the_relay_starts_at_once_for_a_birthday_pair_only_when_the_transfer_can_move(
        a: str, b: str) -> None:
    local, remote = KIND_CANDIDATES[a], KIND_CANDIDATES[b]
    fixed, moving = plan(local, remote, False), plan(local, remote, False, upgrade=True)
    assert fixed.upgrade_s == 0 and moving.upgrade_s == UPGRADE_WINDOW_S
    # one symmetric side, the other cone or untranslated and not reachable (firewalled):
    # birthday punching, which takes seconds (a reachable public side is dialled instead)
    birthday = {local.nat, remote.nat} in ({"symmetric", "cone"}, {"symmetric", "public"}) \
        and not (local.reachable or remote.reachable)
    if birthday:
        assert "relay" not in fixed.staggers and moving.staggers["relay"] == 0.0
    else:
        assert moving.staggers == fixed.staggers
    assert plan(remote, local, False, upgrade=True) == moving  # both sides agree


async def test_a_transfer_moves_from_the_relay_to_a_later_direct_path(tmp_path: Path) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(768 * 1024))  # ~6 s at the relay's 1 Mbit/s per session
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    inbox = tmp_path / "inbox"
    async with relay_supernode() as node:
        a, b = services(tmp_path, alice, bob)
        await b.start()
        try:
            invite, answer, caller, callee = offers(node, alice, bob)
            shared = caller.keys.shared_secret(answer.ephemeral)
            transcript = transcript_hash(invite, answer)
            dial, accept = direct_tcp_attempts(b.listener, callee.session_id)

            staggers = {"relay": 0.0, "tcp": 1.0}  # the direct path comes a second later
            a_late, b_late = LateDirect(UPGRADE_WINDOW_S), LateDirect(UPGRADE_WINDOW_S + 2)
            (a_stream, a_timeline), (b_stream, _) = await asyncio.gather(
                connect_as_initiator(
                    {**a.relays.attempts(caller, invite, answer), "tcp-dial-0": dial},
                    a.paths.securer(caller, shared, transcript), staggers=staggers,
                    late=a_late),
                connect_as_responder(
                    {**b.relays.attempts(callee, invite, answer), "tcp-accept": accept},
                    b.paths.securer(callee, shared, transcript), staggers=staggers,
                    late=b_late))
            assert a_timeline.selected == "relay-0" and a_stream.path == "relay"
            sender, receiver = Moving(a_stream, a_late), Moving(b_stream, b_late)
            progress: list[int] = []
            sent, received = await asyncio.wait_for(asyncio.gather(
                sender.send(src, lambda n, _: progress.append(n), os.urandom(16), sha,
                            first_attempt=True),
                receiver.receive(inbox, PartialStore(), "alice", InboxGuard())), 60)
            for late, moving in ((a_late, sender), (b_late, receiver)):
                late.close()
                await moving.stream.close()
        finally:
            await b.stop()
    assert (sender.moved_from, sender.attempt, sender.stream.path) == \
        ("relay", "tcp-dial-0", "direct-tcp")
    assert (receiver.moved_from, receiver.attempt) == ("relay", "tcp-accept")
    # the move happened mid-transfer: part came over the relay, the rest over TCP
    assert 0 < received.resumed_from < src.stat().st_size
    assert sent.resumed_from == received.resumed_from
    assert received.sha256 == sha
    assert hashlib.sha256((inbox / "big.bin").read_bytes()).hexdigest() == sha
    assert not list(inbox.glob("*.partial"))


def test_what_runs_on_after_the_selection() -> None:
    file, call = LateDirect(UPGRADE_WINDOW_S), LateDirect(None, keep_relays=True)
    # a file on a relay keeps its direct attempts only; on a direct path, nothing
    assert [n for n in ("relay-1", "udp-birthday", "tcp-dial-0")
            if file.wants(n, "relay-0")] == ["udp-birthday", "tcp-dial-0"]
    assert not any(file.wants(n, "udp-punch") for n in ("relay-0", "tcp-dial-0"))
    # UDP first, upgrade to TCP: on a punched UDP path, the direct TCP attempts run on (not
    # a relay, not another UDP attempt); on direct TCP, nothing
    udp_first = LateDirect(UPGRADE_WINDOW_S, from_udp=True)
    names = ("relay-0", "udp-birthday", "tcp-dial-0", "tcp-accept", "tcp-punch-0")
    assert [n for n in names if udp_first.wants(n, "udp-punch")] == \
        ["tcp-dial-0", "tcp-accept", "tcp-punch-0"]
    assert not any(udp_first.wants(n, "tcp-dial-0") for n in names)
    assert [n for n in names if udp_first.wants(n, "relay-1")] == list(names[1:])
    # a call on a relay keeps the other relays (its spares) and the direct attempts; on a
    # direct path it holds no relay session
    assert [n for n in ("relay-0", "relay-1", "udp-birthday")
            if call.wants(n, "relay-0")] == ["relay-1", "udp-birthday"]
    assert [n for n in ("relay-0", "tcp-accept") if call.wants(n, "udp-punch")] == \
        ["tcp-accept"]


def test_a_transfer_leaves_udp_for_tcp_only_with_enough_left_to_send() -> None:
    left = move_rules.UDP_TO_TCP_MIN_LEFT
    assert move_rules.worth_moving("udp-punch", left)
    assert not move_rules.worth_moving("udp-punch", left - 1)
    assert not move_rules.worth_moving("udp-birthday", 0)
    assert move_rules.worth_moving("relay-0", 0)  # off a relay whatever is left


@pytest.mark.parametrize("size", [8 << 20, 2 << 20])
async def test_a_transfer_moves_from_a_zero_rtt_udp_path_to_direct_tcp(
        tmp_path: Path, size: int) -> None:
    """UDP first, upgrade to TCP: the caller selects its 0-RTT QUIC path at once (its first
    bytes ride the first flight); direct TCP completes 0.2 s later. With more than
    :data:`~overlay.media.move_rules.UDP_TO_TCP_MIN_LEFT` still to send the transfer moves
    there mid-way, no byte lost; with less it stays on UDP and the TCP path is dropped."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(size))  # 8 MiB: ~1.6 s on QUIC (about 40 Mbit/s)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    inbox = tmp_path / "inbox"
    async with loopback_pair(tmp_path, zero_rtt=True) as pair:
        a_late = LateDirect(UPGRADE_WINDOW_S, from_udp=True)
        b_late = LateDirect(UPGRADE_WINDOW_S + 2, from_udp=True)
        # direct TCP completes later
        (a_stream, a_timeline, _), (b_stream, _, _) = await pair.race(
            {"udp-punch": 0.0, "tcp": 0.2}, lates=(a_late, b_late))
        assert a_timeline.selected == "udp-punch" and a_stream.path == "udp-punch"
        assert "udp-punch: 0-RTT sent" in [e for _, e in a_timeline.events]
        sender, receiver = Moving(a_stream, a_late), Moving(b_stream, b_late)
        upgraded_at: list[float] = []
        watch = asyncio.ensure_future(b_late.arrived.wait())
        watch.add_done_callback(lambda _: upgraded_at.append(time.time()))
        sent, received = await asyncio.wait_for(asyncio.gather(
            sender.send(src, lambda n, _: None, os.urandom(16), sha, first_attempt=True),
            receiver.receive(inbox, PartialStore(), "alice", InboxGuard())), 60)
        watch.cancel()  # never set when the transfer did not move
        for late, moving in ((a_late, sender), (b_late, receiver)):
            late.close()
            await moving.stream.close()
    assert received.sha256 == sha
    if size < move_rules.UDP_TO_TCP_MIN_LEFT:
        assert (sender.moved_from, sender.stream.path, receiver.moved_from) == \
            (None, "udp-punch", None)
        events = [e for _, e in a_timeline.events]
        assert "tcp-dial-0: authenticated" in events  # completed, and was not moved to
        assert "upgrade: tcp-dial-0" not in events
        assert received.resumed_from in (None, 0)
        return
    assert (sender.moved_from, sender.attempt, sender.stream.path) == \
        ("udp-punch", "tcp-dial-0", "direct-tcp")
    assert (receiver.moved_from, receiver.attempt) == ("udp-punch", "tcp-accept")
    assert 0 < received.resumed_from < src.stat().st_size
    assert sent.resumed_from == received.resumed_from
    # the transfer's first byte is the one the UDP path carried, before the move
    assert received.first_byte_at is not None and received.first_byte_at < upgraded_at[0]
    assert hashlib.sha256((inbox / "big.bin").read_bytes()).hexdigest() == sha
