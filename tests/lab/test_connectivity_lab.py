"""End-to-end connectivity acceptance test, in the NAT lab (real nftables routers).

One bootstrap node and two supernodes on the public segment; two clients behind each of the
seven router kinds (``public-1``, ``public-2``, ``firewalled-1``, ... each behind its own
router; ``cgnat-N`` behind two). For every ordered pair of kinds (A, B), same-kind pairs
included (49 pairs), client ``A-1`` sends a fresh random 1 MiB file to client ``B-2`` with
``overlay send --json``; the test checks the path it reports against :data:`EXPECTED`, and the
file's sha256 in ``B-2``'s inbox.

Expected paths: the issue's table, as data in
:data:`tests.helpers.lab_paths.FILE_PATHS` (its docstring states the rules; the calls'
table, :data:`~tests.helpers.lab_paths.CALL_PATHS`, is derived from it).

``test_same_lan_pair``: two clients behind one router connect over their LAN addresses
(``direct-tcp``, technique ``lan``, on both sides).

``test_all_pairs_impaired`` repeats the 25 pairs of the first five kinds
(:data:`~tests.helpers.lab_overlay.BASE_KINDS`) with 100 ms delay and 2 % loss on every
client's uplink and on both supernodes' links. Each impaired link delays each direction by
100 ms and drops 2 % of the frames in each direction, so between two clients (two impaired
links on the way) a round trip takes >= 400 ms and ~7.8 % of round trips lose a packet
(1 - 0.98^4); client <-> supernode is the same.

Pairs run on a few threads at once, never two at a time on the same client (see
:func:`tests.helpers.lab_overlay.run_exclusive`). Daemon logs, inboxes and a
``results.json`` per test
are in pytest's tmp dir (printed on failure).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lab_overlay import (
    BASE_KINDS,
    KINDS,
    LabOverlay,
    SendResult,
    lab_available,
    run_exclusive,
    sha256_file,
    two_per_kind,
)
from tests.helpers.lab_paths import ALSO_ACCEPTED_IMPAIRED, FILE_PATHS, D, P, R, T

_ok, _why = lab_available()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netlab

MiB = 1 << 20
FILE_SIZE = MiB

# -- the expected table ----------------------------------------------------------------------

#: (sender kind, receiver kind) -> path ``overlay send --json`` must report
EXPECTED = FILE_PATHS


#: pairs at once (never two on one client). At most RELAY_SLOTS pairs that must go through a
#: relay run at once: a supernode's default --relay-budget (2 Mbit/s) holds two 1 Mbit/s
#: sessions, and the caller's race opens a half on every chosen relay (both supernodes here),
#: so a third concurrent relayed transfer gets "relay refused: budget" -- a capacity limit,
#: not a connectivity failure.
PARALLEL = 3
RELAY_SLOTS = 2





def expected_outcome(src_kind: str, dst_kind: str) -> str:
    """The path the pair must report."""
    return EXPECTED[(src_kind, dst_kind)]


def test_expected_table_matches_the_issue_rules() -> None:
    assert len(EXPECTED) == 49
    for (a, b), path in EXPECTED.items():
        if {"public", "mapping"} & {a, b}:
            rule = D
        elif {a, b} <= {"firewalled", "cone", "cgnat"}:
            rule = P
        elif "symmetric" in {a, b} and {a, b} <= {"symmetric", "firewalled", "cone", "cgnat"} \
                and {a, b} != {"symmetric"}:
            rule = P  # birthday punching
        elif "tcp-only" in {a, b} and {a, b} <= {"tcp-only", "firewalled", "cone", "cgnat"}:
            rule = T
        else:
            rule = R
        assert path == rule, (a, b)


# -- running and checking pairs ---------------------------------------------------------------


@dataclass
class PairOutcome:
    src_kind: str
    dst_kind: str
    expected: str
    result: SendResult
    received_sha: str | None
    sent_sha: str
    problems: list[str]
    #: a birthday pair that went through the relay after its birthday punch missed (logged)
    birthday_miss: bool = False

    def row(self) -> dict[str, Any]:
        r = self.result
        return {
            "pair": f"{self.src_kind}->{self.dst_kind}", "expected": self.expected,
            "birthday_miss": self.birthday_miss,
            "got": r.path if r.ok else "error",
            "technique": r.json.get("technique") if r.json else None,
            "rc": r.returncode, "seconds": round(r.seconds, 2),
            "send_seconds": r.json.get("seconds") if r.json else None,
            "relay": r.json.get("relay") if r.json else None,
            "intact": self.received_sha == self.sent_sha if r.ok else None,
            "ok": not self.problems, "problems": self.problems,
            "message": None if r.ok else r.output[-300:],
        }


def check_pair(ov: LabOverlay, src_kind: str, dst_kind: str, size: int,
               send_timeout: float,
               also_accepted: dict[str, set[str]] | None = None) -> PairOutcome:
    src, dst = f"{src_kind}-1", f"{dst_kind}-2"
    expected = expected_outcome(src_kind, dst_kind)
    name = f"{src_kind}-to-{dst_kind}-{os.urandom(3).hex()}.bin"
    file = ov.make_file(src, name, size)
    sent_sha = sha256_file(file)
    res = ov.send(src, dst, file, timeout=send_timeout)
    problems: list[str] = []
    received_sha: str | None = None
    target = ov.inbox(dst) / name
    if not res.ok:
        problems.append(f"send failed: rc={res.returncode}"
                        f"{' (timeout)' if res.timed_out else ''}: {res.output[-400:]!r}")
    else:
        j = res.json or {}
        if res.json is None:
            problems.append(f"no JSON on stdout: {res.stdout[-300:]!r}")
        accepted = {expected} | (also_accepted or {}).get(expected, set())
        birthday_miss = (j.get("path") == R and is_birthday_pair(src_kind, dst_kind)
                         and birthday_missed(ov, res))
        if j.get("path") not in accepted and not birthday_miss:
            problems.append(f"path {j.get('path')!r}, expected {expected!r}")
        if j.get("path") == R and not ov.is_supernode_id(j.get("relay")):
            problems.append(f"relay {j.get('relay')!r} is not one of the supernodes' ids "
                            f"{ov.supernode_ids()}")
        if j.get("path") != R and j.get("relay") is not None:
            problems.append(f"relay {j.get('relay')!r} on a {j.get('path')} path")
        if j.get("bytes") != size:
            problems.append(f"bytes {j.get('bytes')!r}, expected {size}")
        if j.get("sha256") != sent_sha:
            problems.append("reported sha256 differs from the file's")
        if not isinstance(j.get("seconds"), int | float):
            problems.append(f"seconds {j.get('seconds')!r}")
        deadline = time.monotonic() + 5.0
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not target.exists():
            problems.append(f"{name} not in {dst}'s inbox "
                            f"({[p.name for p in ov.inbox_files(dst)]})")
        else:
            received_sha = sha256_file(target)
            if received_sha != sent_sha:
                problems.append("received file's sha256 differs")
    return PairOutcome(src_kind, dst_kind, expected, res, received_sha, sent_sha, problems,
                       res.ok and birthday_miss)


#: birthday pairs of one matrix run allowed to miss and go through the relay: each misses
#: with ~1.7 % (theory) to ~5.4 % (measured in the lab, issue 13's note); at 5.4 % over the
#: six birthday pairs P(more than 2) < 0.3 %
MAX_BIRTHDAY_MISSES = 2


def is_birthday_pair(src_kind: str, dst_kind: str) -> bool:
    kinds = {src_kind, dst_kind}
    return "symmetric" in kinds and len(kinds) == 2 \
        and expected_outcome(src_kind, dst_kind) == P


def birthday_missed(ov: LabOverlay, res: SendResult) -> bool:
    """The hard side of this send logged a birthday punch that failed or was cut short by
    the relay (tried and missed: birthday punching is a matter of chance, ~98 %)."""
    lines = [e for host in (res.src, res.dst)
             for e in ov.log_lines(host, lambda e: e.get("event") == "birthday_punch",
                                   since=res.started_at - 0.2)]
    return any(e.get("role") == "hard" and e.get("outcome") in ("failed", "cancelled")
               for e in lines)


def run_matrix(ov: LabOverlay, pairs: list[tuple[str, str]], *, size: int, parallel: int,
               send_timeout: float,
               also_accepted: dict[str, set[str]] | None = None) -> list[PairOutcome]:
    jobs = []
    relayed = 0
    for a, b in pairs:
        resources = [f"{a}-1", f"{b}-2"]
        if expected_outcome(a, b) == R:  # RELAY_SLOTS at a time (see PARALLEL)
            resources.append(f"relay-slot-{relayed % RELAY_SLOTS}")
            relayed += 1
        jobs.append((tuple(resources),
                     (lambda a=a, b=b: check_pair(ov, a, b, size, send_timeout, also_accepted))))
    return run_exclusive(jobs, parallel)


def table(outcomes: list[PairOutcome]) -> str:
    lines = [f"{'pair':<24} {'expected':<11} {'got':<11} {'technique':<9} {'rc':>3} {'s':>7}  ok"]
    for o in outcomes:
        r = o.row()
        alt = " (accepted alternative)" if r["ok"] and r["got"] != r["expected"] else ""
        lines.append(f"{r['pair']:<24} {r['expected']:<11} {r['got'] or '-':<11} "
                     f"{r['technique'] or '-':<9} "
                     f"{r['rc']:>3} {r['seconds']:>7.2f}  {'yes' if r['ok'] else 'NO'}{alt}")
    return "\n".join(lines)


def report(ov: LabOverlay, outcomes: list[PairOutcome], work: Path, title: str) -> None:
    rows = [o.row() for o in outcomes]
    (work / "results.json").write_text(json.dumps(
        {"title": title, "pairs": rows}, indent=2))
    print(f"\n{title}\n{table(outcomes)}")
    bad = [o for o in outcomes if o.problems]
    if bad:
        details = "\n".join(
            f"- {o.src_kind}-1 -> {o.dst_kind}-2: {'; '.join(o.problems)}\n"
            f"  {o.result.describe()}\n{relevant_logs(ov, o)}" for o in bad)
        pytest.fail(f"{len(bad)}/{len(outcomes)} pairs failed ({title}); logs in "
                    f"{work / 'logs'}\n{table(outcomes)}\n{details}", pytrace=False)


RELEVANT_EVENTS = ("path_selection", "incoming_transfer_failed", "file_received", "failover",
                   "invite_", "answer_not_delivered", "offer_refused", "session_dead",
                   "client_gone", "transfer_path_lost", "Traceback", "Error")
#: what the relays said about their sessions while the pair ran (why a relay path ended)
RELAY_EVENTS = ("relay_session_ended", "relay_refused")


def relevant_logs(ov: LabOverlay, o: PairOutcome, limit: int = 12) -> str:
    """The sender's and receiver's log lines about this send (from its start on)."""
    since = o.result.started_at - 0.2
    until = o.result.started_at + o.result.seconds + 0.5
    out = []
    for host in (o.result.src, o.result.dst):
        for entry in ov.log_lines(host, lambda e: any(k in json.dumps(e)
                                                      for k in RELEVANT_EVENTS),
                                  since=since, until=until)[:limit]:
            out.append(f"    {host}: {json.dumps(entry)[:400]}")
    for host in ov.supernode_hosts:
        for entry in ov.log_lines(host, lambda e: e.get("event") in RELAY_EVENTS,
                                  since=since, until=until)[:limit]:
            out.append(f"    {host}: {json.dumps(entry)[:400]}")
    return "\n".join(out)


ALL_PAIRS = [(a, b) for a in KINDS for b in KINDS]
BASE_PAIRS = [(a, b) for a in BASE_KINDS for b in BASE_KINDS]
#: the attempt kinds (status ``connectivity``) whose win gives each path ``send`` reports
WINNING_KINDS = {D: {"tcp-dial", "tcp-dial-mapped", "tcp-dial-lan", "tcp-accept"},
                 P: {"udp-punch", "udp-birthday"}, T: {"tcp-punch"}, R: {"relay"}}


def connectivity_problems(ov: LabOverlay, outcomes: list[PairOutcome]) -> list[str]:
    """Each sender's ``status`` -> ``connectivity`` counted its races: for every path its
    sends took, at least that many wins (or upgrades) of the matching attempt kinds, and as
    many attempts as wins and upgrades or more (a send that resumed on a new path races
    again, so more is fine)."""
    problems = []
    for sender in sorted({f"{o.src_kind}-1" for o in outcomes}):
        conn = ov.status(sender).get("connectivity") or {}
        kinds: dict[str, dict[str, int]] = {}
        for counts in (conn.get("pairs") or {}).values():
            for kind, c in counts.items():
                slot = kinds.setdefault(kind, {"attempts": 0, "wins": 0, "upgrades": 0})
                slot["attempts"] += c["attempts"]
                slot["wins"] += c["wins"]
                slot["upgrades"] += c.get("upgrades", 0)
        sent = [o for o in outcomes if f"{o.src_kind}-1" == sender and o.result.ok]
        for path, winning in WINNING_KINDS.items():
            took = sum(1 for o in sent if (o.result.json or {}).get("path") == path)
            # a transfer that moved from the relay to a punched path mid-way (issue 13)
            # counts an upgrade of that path's kind; the race itself was the relay's
            won = sum(kinds.get(k, {}).get("wins", 0) + kinds.get(k, {}).get("upgrades", 0)
                      for k in winning)
            if won < took:
                problems.append(f"{sender}: {took} sends took {path}, status counts {won} "
                                f"wins of {sorted(winning)}: {conn}")
        for kind, c in kinds.items():
            if c["attempts"] < c["wins"] + c["upgrades"]:
                problems.append(f"{sender}: {kind} won more than it was attempted: {c}")
        if conn.get("races", 0) < len(sent):
            problems.append(f"{sender}: {len(sent)} sends, {conn.get('races')} races counted")
    return problems


# -- tests ------------------------------------------------------------------------------------


def assert_every_client_behind_its_router(ov: LabOverlay, statuses: dict[str, Any]) -> None:
    """The harness itself: the clients behind the seven router kinds attached, and each is
    seen by its supernode at its public address (its router's WAN address when NATed) -- so
    every client really sits behind its router."""
    assert ov.lab is not None
    used = set()
    for host, status in statuses.items():
        assert status["state"] == "attached", (host, status)
        reflexive = status["reflexive"]["host"]
        assert reflexive == ov.lab.public_ip(host), (host, reflexive)
        used.add(status["supernode"]["address"])
    # clients start once both supernodes are in the directory and spread over them
    # (equal RTTs, then load, then chance), so signalling crosses supernodes
    assert used == {ov.supernode_addr(sn) for sn in ov.supernode_hosts}, used


@pytest.mark.timeout(600)
def test_all_pairs(tmp_path: Path) -> None:
    with LabOverlay(tmp_path, two_per_kind()) as ov:
        assert_every_client_behind_its_router(ov, ov.wait_attached(timeout=60))
        outcomes = run_matrix(ov, ALL_PAIRS, size=FILE_SIZE, parallel=PARALLEL,
                              send_timeout=90)
        ov.check_alive()
        report(ov, outcomes, tmp_path, "all 49 pairs, 1 MiB, no impairment")
        misses = [o.row()["pair"] for o in outcomes if o.birthday_miss]
        assert len(misses) <= MAX_BIRTHDAY_MISSES, f"birthday punching missed for {misses}"
        counted = connectivity_problems(ov, outcomes)
        assert not counted, "\n".join(counted)


@pytest.mark.timeout(180)
def test_same_lan_pair(tmp_path: Path) -> None:
    """Two clients behind one cone router: the file goes straight over the LAN (the caller
    dials the callee's LAN address, ``tcp-dial-lan-N``, or the callee the caller's), not
    hairpinned through the router: both sides report technique ``lan``, and the callee's
    is ``lan`` only when the connection it took came from the caller's LAN address."""
    with LabOverlay(tmp_path, {"home-a": "cone", "home-b": "cone"},
                    same_lan={"home-b": "home-a"}) as ov:
        assert ov.lab is not None
        assert ov.lab.public_ip("home-a") == ov.lab.public_ip("home-b")
        file = ov.make_file("home-a", "lan.bin", FILE_SIZE)
        res = ov.send("home-a", "home-b", file, timeout=60)
        assert res.ok and res.json is not None, res.describe()
        assert (res.json["path"], res.json["technique"]) == ("direct-tcp", "lan"), \
            res.describe()
        assert res.json["relay"] is None
        assert res.json["sha256"] == sha256_file(file)
        assert sha256_file(ov.wait_inbox_file("home-b", "lan.bin")) == sha256_file(file)
        # the race as the caller logged it: the attempt it selected
        [race] = ov.log_lines("home-a", lambda e: e.get("event") == "path_selection")
        assert race["outcome"] == "tcp-accept" or race["outcome"].startswith("tcp-dial-lan-"), \
            race
        received = [t for t in ov.status("home-b").get("transfers", [])
                    if t.get("name") == "lan.bin"]
        assert [(t["path"], t["technique"]) for t in received] == [("direct-tcp", "lan")], \
            received



IMPAIRMENT: dict[str, float] = {"delay_ms": 100, "loss_pct": 2}
#: On lossy 400 ms paths a relay reservation outlives its transfer for a while (the loser
#: half of the race and the finished session are released only when their TCP closes), so
#: two relayed pairs at a time under the default 2 Mbit/s budget were refused ("relay
#: refused: budget" on both relays, 2 of 12 pairs). Twice the default budget (four 1 Mbit/s
#: sessions per supernode) keeps this a connectivity test; one relayed pair at a time with
#: the default budget takes ~4.5 min instead of ~3.
IMPAIRED_SUPERNODE_ARGS = ("--relay-budget", "4Mbit")


@pytest.mark.timeout(900)
def test_all_pairs_impaired(tmp_path: Path) -> None:
    """The 25 pairs of the first five kinds with 100 ms / 2 % loss per direction on every
    client's and supernode's link: every pair delivers an intact file. Paths are checked too,
    with the alternatives in :data:`ALSO_ACCEPTED_IMPAIRED`; the table shows which path each
    pair took."""
    with LabOverlay(tmp_path, two_per_kind(BASE_KINDS), netem=IMPAIRMENT,
                    supernode_args=IMPAIRED_SUPERNODE_ARGS) as ov:
        ov.wait_attached(timeout=120)
        outcomes = run_matrix(ov, BASE_PAIRS, size=FILE_SIZE, parallel=5, send_timeout=240,
                              also_accepted=ALSO_ACCEPTED_IMPAIRED)
        ov.check_alive()
        report(ov, outcomes, tmp_path, "all 25 pairs, 1 MiB, 100 ms + 2 % loss per link")
