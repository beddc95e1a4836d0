"""Sans-IO supernode choice: ranking, backup, backoff, failover order, host cache, control."""

from __future__ import annotations

import asyncio
import json
import random
import stat
from collections import Counter

import pytest

from overlay.attach.messages import Alternative
from overlay.client.attach_policy import (
    Backoff,
    BackoffPolicy,
    Candidate,
    FailoverPlan,
    Measurement,
    Rediscover,
    Source,
    TryCandidate,
    choose_backup,
    merge_candidates,
    rank,
    resolve_alternatives,
    spread,
)
from overlay.client.control import (
    ControlError,
    ControlServer,
    ControlSocketError,
    control_request_async,
)
from overlay.client.host_cache import HostCache
from overlay.core import records
from overlay.core.identity import Identity


def cand(i: int, host: str | None = None) -> Candidate:
    return Candidate(host or f"10.0.0.{i}", 4000, bytes([i]) * 32)


A, B, C, D, E = (cand(i) for i in range(1, 6))


def steps(plan: FailoverPlan) -> list[TryCandidate | Rediscover]:
    out: list[TryCandidate | Rediscover] = []
    while (step := plan.next()) is not None:
        out.append(step)
    return out


# --- ranking --------------------------------------------------------------------------------


def test_rank_by_rtt_among_those_with_room() -> None:
    measured = {
        A.node_key: Measurement(0.030, True),
        B.node_key: Measurement(0.010, False),  # nearest, but full
        C.node_key: Measurement(0.020, True),
        D.node_key: Measurement(None),  # did not answer
        # E was never probed
    }
    assert rank([A, B, C, D, E], measured) == [C, A]


def test_rank_breaks_rtt_ties_by_load_and_honours_exclude() -> None:
    measured = {
        A.node_key: Measurement(0.010, True, load_permille=900),
        B.node_key: Measurement(0.010, True, load_permille=100),
        C.node_key: Measurement(0.005, True),
    }
    assert rank([A, B, C], measured) == [C, B, A]
    assert rank([A, B, C], measured, exclude=[C.node_key]) == [B, A]


def test_rank_treats_near_equal_rtts_as_equal_and_spreads_ties() -> None:
    a, b, c = (Candidate(f"10.0.0.{i}", 4000, bytes([i]) * 32, load=i) for i in (1, 2, 3))
    measured = {
        a.node_key: Measurement(0.0101, True, load_permille=10),
        b.node_key: Measurement(0.0100, True, load_permille=5),  # same bucket, less loaded
        c.node_key: Measurement(0.0150, True),  # clearly farther
    }
    assert rank([a, b, c], measured) == [b, a, c]
    # equal RTT and load: the record's client count decides
    same = {k: Measurement(0.001, True) for k in (a.node_key, b.node_key, c.node_key)}
    assert rank([c, b, a], same) == [a, b, c]
    # all equal: chance decides, so many clients spread over the supernodes
    flat = [Candidate(f"10.0.1.{i}", 4000, bytes([i]) * 32) for i in range(1, 6)]
    flat_measured = {x.node_key: Measurement(0.001, True) for x in flat}
    firsts = {rank(flat, flat_measured, rng=random.Random(seed))[0] for seed in range(50)}
    assert len(firsts) == 5


def test_merge_candidates_keeps_one_per_key_latest_wins() -> None:
    moved = Candidate("10.9.9.9", 5000, A.node_key)
    assert merge_candidates([A, B], [moved]) == [moved, B]


def test_candidate_from_record_and_ipv6_address() -> None:
    node = Identity.generate()
    signed = records.supernode(node, "2001:db8::1", 4000, seq=1, load=3, max_clients=3)
    c = Candidate.from_record(signed)
    assert (c.host, c.port, c.node_key) == ("2001:db8::1", 4000, node.public_key)
    assert c.address == "[2001:db8::1]:4000" and c.full_by_record
    with pytest.raises(TypeError):
        Candidate.from_record(records.presence(node, "alice", "pc", seq=1, online=False))


# --- backup ----------------------------------------------------------------------------------


def test_backup_is_next_best_and_prefers_another_host() -> None:
    same_host_as_a = Candidate(A.host, 4001, bytes([9]) * 32)
    assert choose_backup([A, same_host_as_a, C], primary=A) == C
    # only a same-host one is left: better than none
    assert choose_backup([A, same_host_as_a], primary=A) == same_host_as_a
    assert choose_backup([A], primary=A) is None
    assert choose_backup([B, C], primary=None) == B


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap_without_jitter() -> None:
    b = Backoff(BackoffPolicy(initial_s=0.5, multiplier=2, cap_s=5, jitter=0.0))
    assert [b.next_delay() for _ in range(7)] == [0.5, 1, 2, 4, 5, 5, 5]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_within_bounds_and_spreads() -> None:
    policy = BackoffPolicy(initial_s=1, multiplier=2, cap_s=8, jitter=0.5)
    b = Backoff(policy, random.Random(7))
    for _ in range(40):
        ceiling = b.peek_ceiling()
        d = b.next_delay()
        assert ceiling * 0.5 <= d <= ceiling <= 8
    # many clients that lost one supernode do not retry in lockstep
    firsts = {round(Backoff(policy, random.Random(seed)).next_delay(), 6) for seed in range(20)}
    assert len(firsts) > 15


def test_backoff_survives_a_long_outage() -> None:
    b = Backoff(BackoffPolicy(initial_s=0.1, cap_s=30, jitter=0.0))
    for _ in range(5000):
        d = b.next_delay()
    assert d == 30


def test_backoff_after_a_session_stable_resets_short_grows() -> None:
    b = Backoff(BackoffPolicy(initial_s=1, cap_s=60, jitter=0.0, stable_after_s=10,
                              failover_jitter_s=0.0))
    assert b.session_ended(0.2) == 0  # the first failover is immediate
    assert b.session_ended(0.2) == 1  # flapping supernode: back off
    assert b.session_ended(0.2) == 2
    assert b.session_ended(30) == 0  # a healthy session: fail over at once, start over
    assert b.session_ended(0.2) == 0
    assert b.session_ended(0.2) == 1


def test_the_clients_of_a_lost_supernode_stagger_their_failover() -> None:
    """1,000 clients lose a healthy attachment at once: their re-attachments spread over
    the 2 s jitter window, at most ~1/10 of them in any 0.2 s of it (no thundering herd)."""
    delays = [Backoff(rng=random.Random(seed)).session_ended(3600) for seed in range(1000)]
    assert all(0 <= d < 2.0 for d in delays)
    per_slot = Counter(int(d / 0.2) for d in delays)
    assert len(per_slot) == 10 and max(per_slot.values()) < 140


def test_clients_spread_over_near_supernodes_in_proportion_to_capacity() -> None:
    big = Candidate("10.0.0.1", 4000, b"\x01" * 32, max_clients=3000)
    small = Candidate("10.0.0.2", 4000, b"\x02" * 32, max_clients=1000)
    half_full = Candidate("10.0.0.3", 4000, b"\x03" * 32, max_clients=2000)
    far = Candidate("10.0.0.4", 4000, b"\x04" * 32, max_clients=100_000)
    measured = {big.node_key: Measurement(0.020, True), small.node_key: Measurement(0.021, True),
                half_full.node_key: Measurement(0.022, True, load_permille=500),
                far.node_key: Measurement(0.080, True)}
    ranked = rank([big, small, half_full, far], measured)
    firsts = Counter(spread(ranked, measured, random.Random(seed))[0].node_key
                     for seed in range(5000))
    # spare capacity 3000 : 1000 : 1000; the far one (not near the best) is never first
    assert firsts[far.node_key] == 0
    assert 0.56 < firsts[big.node_key] / 5000 < 0.64
    assert 0.16 < firsts[small.node_key] / 5000 < 0.24
    assert 0.16 < firsts[half_full.node_key] / 5000 < 0.24
    assert spread(ranked, measured, random.Random(1))[-1] == far


def test_backoff_policy_rejects_nonsense() -> None:
    for kwargs in ({"initial_s": 0}, {"cap_s": 0.1, "initial_s": 1}, {"jitter": 1.0},
                   {"multiplier": 0.5}, {"failover_jitter_s": -1}):
        with pytest.raises(ValueError):
            BackoffPolicy(**kwargs)  # type: ignore[arg-type]


# --- failover order ---------------------------------------------------------------------------


def test_failover_order_backup_then_alternatives_then_rediscovery() -> None:
    plan = FailoverPlan(backup=B, alternatives=[C, D], exclude=[A.node_key])
    assert plan.next() == TryCandidate(B, Source.BACKUP)
    assert plan.next() == TryCandidate(C, Source.ALTERNATIVE)
    assert plan.next() == TryCandidate(D, Source.ALTERNATIVE)
    assert isinstance(plan.next(), Rediscover)
    # the ranking may include the lost one and ones already tried: neither is retried
    plan.discovered([A, B, E, C])
    assert plan.next() == TryCandidate(E, Source.DISCOVERY)
    assert plan.next() is None  # round failed: back off


def test_refusal_alternatives_are_tried_next_and_only_once() -> None:
    plan = FailoverPlan(backup=B, alternatives=[C])
    assert plan.next() == TryCandidate(B, Source.BACKUP)
    plan.refused([D, B, E])  # B refused (FULL) and named D, B, E
    assert [s.candidate for s in steps(plan) if isinstance(s, TryCandidate)] == [D, E, C]


def test_plan_without_backup_or_hints_starts_with_discovery_once() -> None:
    plan = FailoverPlan()
    assert isinstance(plan.next(), Rediscover)
    plan.discovered([A, B, C])
    assert [s.candidate for s in steps(plan) if isinstance(s, TryCandidate)] == [A, B, C]
    assert plan.next() is None
    assert plan.tried == {A.node_key, B.node_key, C.node_key}


def test_backup_equal_to_the_lost_supernode_is_skipped() -> None:
    plan = FailoverPlan(backup=A, exclude=[A.node_key], rediscover=False)
    assert plan.next() is None


def test_discovered_candidates_are_capped() -> None:
    plan = FailoverPlan(max_discovered=2)
    plan.next()
    plan.discovered([A, B, C, D])
    assert len(steps(plan)) == 2


def test_alternatives_resolve_keys_from_records_or_are_dropped() -> None:
    known = [A, B]
    alts = [
        Alternative(B.host, B.port),  # no key: take it from the known record
        Alternative("10.7.7.7", 4000),  # no key, unknown: cannot pin, dropped
        Alternative(C.host, C.port, C.node_key),  # named its key
        Alternative(A.host, A.port, A.node_key),
        Alternative(A.host, A.port, A.node_key),  # duplicate
    ]
    assert resolve_alternatives(alts, known) == [B, C, A]


# --- host cache --------------------------------------------------------------------------------


def test_host_cache_round_trip_order_and_mode(tmp_path) -> None:
    cache = HostCache.in_state_dir(tmp_path)
    cache.add(A, now=100)
    cache.add(B, now=200)
    cache.succeeded(A, now=300)
    cache.measured(A.node_key, 0.0123, now=300)
    cache.pin_bootstrap("192.0.2.1:4000", C.node_key)
    cache.save()
    path = tmp_path / "supernodes.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = HostCache.in_state_dir(tmp_path)
    assert again.candidates() == [A, B]  # last success first
    assert again.entries[A.node_key].rtt_ms == 12.3
    assert again.bootstrap_keys == {"192.0.2.1:4000": C.node_key}


def test_host_cache_ignores_garbage_and_bad_entries(tmp_path) -> None:
    path = tmp_path / "supernodes.json"
    path.write_text("not json")
    assert len(HostCache.in_state_dir(tmp_path)) == 0
    good = {"host": A.host, "port": 4000, "node_key": A.node_key.hex()}
    path.write_text(json.dumps({"version": 1, "supernodes": [
        good, {"host": "not-an-ip", "port": 1, "node_key": B.node_key.hex()},
        {"host": "10.0.0.2", "port": 70000, "node_key": B.node_key.hex()},
        {"host": "10.0.0.2", "port": 1, "node_key": "abcd"}, "junk",
    ], "bootstrap_keys": {"x": "zz"}}))
    assert HostCache.in_state_dir(tmp_path).candidates() == [A]


def test_host_cache_is_bounded_and_forgets_dead_entries(tmp_path) -> None:
    cache = HostCache(tmp_path / "c.json", max_entries=3)
    for i in range(1, 6):
        cache.add(cand(i), now=float(i))
    assert len(cache) == 3 and {c.node_key[0] for c in cache.candidates()} == {3, 4, 5}
    for _ in range(5):
        cache.failed(cand(3).node_key)
    cache.add(cand(4), now=30 * 24 * 3600.0)
    assert cand(3).node_key not in cache.entries


def test_host_cache_updates_a_moved_supernode() -> None:
    cache = HostCache(None)
    cache.add(A, now=1)
    moved = Candidate("10.8.8.8", 4100, A.node_key)
    cache.add(moved, now=2)
    assert cache.candidates() == [moved]
    cache.save()  # no path: nothing happens


# --- control protocol (in-process, no daemon) ----------------------------------------------------


async def test_control_protocol_is_strict(tmp_path) -> None:
    server = ControlServer(tmp_path / "ctl.sock", max_line_bytes=1024)

    async def echo(args: dict[str, object]) -> dict[str, object]:
        if args.get("fail"):
            raise ControlError("asked to fail")
        return {"echo": args}

    server.register("echo", echo, {"text": (str, True), "fail": (bool, False)})
    with pytest.raises(ValueError):
        server.register("echo", echo)
    await server.start()
    path = server.path
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        ask = control_request_async
        assert await ask(path, {"cmd": "echo", "text": "hi", "id": 7}) == {
            "ok": True, "echo": {"text": "hi"}, "id": 7}
        assert (await ask(path, {"cmd": "nope"}))["error"].startswith("unknown command")
        assert "unknown parameter" in (await ask(path, {"cmd": "echo", "text": "a", "x": 1}))[
            "error"]
        assert "needs parameter" in (await ask(path, {"cmd": "echo"}))["error"]
        assert "wrong type" in (await ask(path, {"cmd": "echo", "text": 5}))["error"]
        assert "wrong type" in (await ask(path, {"cmd": "echo", "text": "a", "fail": 1}))[
            "error"]
        assert await ask(path, {"cmd": "echo", "text": "a", "fail": True}) == {
            "ok": False, "error": "asked to fail"}
        assert "cmd" in (await ask(path, {"text": "a"}))["error"]
        assert "echo" in (await ask(path, {"cmd": "help"}))["commands"]

        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"[1, 2]\n{not json\n\xff\xfe\n")
        for _ in range(3):
            assert json.loads(await reader.readline())["ok"] is False
        writer.write(b"x" * 5000 + b"\n")  # over the line limit: error, then closed
        answer = json.loads(await reader.readline())
        assert "exceeds" in answer["error"]
        assert await reader.read() == b""
        writer.close()
    finally:
        await server.stop()
    assert not path.exists()


async def test_control_socket_replaces_only_stale_sockets(tmp_path) -> None:
    path = tmp_path / "ctl.sock"
    first = ControlServer(path)
    await first.start()
    try:
        with pytest.raises(ControlSocketError, match="another process"):
            await ControlServer(path).start()
    finally:
        await first.stop()
    # a socket left behind by a daemon that died is replaced
    import socket

    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    second = ControlServer(path)
    await second.start()
    assert (await control_request_async(path, {"cmd": "help"}))["ok"]
    await second.stop()
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await ControlServer(plain).start()
