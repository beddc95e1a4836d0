"""Calls in the NAT lab: ``overlay call --json`` between pairs of router kinds, judged by the
final JSON line (the path :data:`~tests.helpers.lab_paths.CALL_PATHS` expects, loss and MOS
thresholds), on a :class:`~tests.helpers.lab_overlay.LabOverlay` (two clients per kind).

Used by ``tests/lab/test_calls_lab.py`` (a few pairs, short calls) and by the full matrix,
``python -m tools.natlab.calls``.

Thresholds (issue 15): with no impairment, loss 0 and MOS >= 4.3 on every path; with 40 ms
one way and 1 % loss on every link, MOS >= 4.0 on direct paths and >= 3.8 on relayed ones.
Both ends are judged: the caller's final line, and the callee's (its ``calls`` entry, which
says what the callee heard). Impaired, a call may take the alternatives the impaired file
matrix accepts (:data:`~tests.helpers.lab_paths.ALSO_ACCEPTED_IMPAIRED`) and is held to the
thresholds of the path it took.

"Every link" is every client's uplink (each direction): a direct path crosses two impaired
links (80 ms one way, ~2 % loss), a relayed one the same two plus the supernode's clean link.
``impair_supernodes`` also impairs the supernodes' links, as the file matrix does; a relayed
call then crosses four (160 ms, ~4 % loss: by the E-model below MOS 3.8 even over UDP).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from overlay.client.control import ControlSocketError
from tests.helpers.lab_overlay import OVERLAY, LabOverlay, run_exclusive
from tests.helpers.lab_paths import (
    ALSO_ACCEPTED_IMPAIRED,
    CALL_PATHS,
    RELAYED_PATHS,
    call_relay_carriage,
)
from tests.helpers.repo import REPO

#: the issue's impairment: each direction of every client's and supernode's link
IMPAIRMENT: dict[str, float] = {"delay_ms": 40, "loss_pct": 1}
MOS_UNIMPAIRED = 4.3
MOS_IMPAIRED_DIRECT = 4.0
MOS_IMPAIRED_RELAYED = 3.8
#: calls at once at most (each on its own caller and callee), and relayed calls at once
#: (a call reserves a relay's per-session cap, 1 Mbit/s, on every relay of its race: two fit
#: a supernode's default 2 Mbit/s budget)
PARALLEL = 7
RELAY_SLOTS = 2
#: setting a call up (lookup, invite, path race) and ending it, beyond its seconds
SETUP_MARGIN_S = 60.0


@dataclass(frozen=True)
class Thresholds:
    """What the final line of a call on ``path`` must show."""

    min_mos: float
    #: the highest loss_pct accepted (None: not checked)
    max_loss_pct: float | None


#: path -> the lowest MOS accepted instead of the issue's (a test's own, lower, bar)
MosFloors = dict[str, float]


def thresholds(path: str, impaired: bool, floors: MosFloors | None = None) -> Thresholds:
    """The issue's thresholds for a call on ``path``, or ``floors[path]`` as its MOS bar."""
    if not impaired:
        limits = Thresholds(MOS_UNIMPAIRED, 0.0)
    else:
        relayed = path in RELAYED_PATHS
        limits = Thresholds(MOS_IMPAIRED_RELAYED if relayed else MOS_IMPAIRED_DIRECT, None)
    if floors and path in floors:
        return Thresholds(floors[path], limits.max_loss_pct)
    return limits


@dataclass
class CallOutcome:
    caller_kind: str
    callee_kind: str
    expected: str
    returncode: int
    seconds: float
    final: dict[str, Any] | None
    output: str
    #: the callee's final line (what it heard), from its ``calls`` entry
    callee_final: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    #: how the caller carried the call's frames at its end (``carried_as`` of its
    #: ``call_ended`` log line): ``datagram`` or ``stream``
    carried_as: str | None = None

    @property
    def pair(self) -> str:
        return f"{self.caller_kind}->{self.callee_kind}"

    def row(self) -> dict[str, Any]:
        f = self.final or {}
        return {"pair": self.pair, "expected": self.expected, "path": f.get("path"),
                "relay": f.get("relay"), "carried_as": self.carried_as, "mos": f.get("mos"),
                "loss_pct": f.get("loss_pct"),
                "late_pct": f.get("late_pct"), "jitter_ms": f.get("jitter_ms"),
                "one_way_ms_p50": f.get("one_way_ms_p50"),
                "one_way_ms_p95": f.get("one_way_ms_p95"),
                "frames_sent": f.get("frames_sent"), "frames_received": f.get("frames_received"),
                "call_seconds": f.get("seconds"), "rc": self.returncode,
                "callee": {k: (self.callee_final or {}).get(k) for k in (
                    "mos", "loss_pct", "late_pct", "jitter_ms", "one_way_ms_p50",
                    "frames_received")},
                "wall_s": round(self.seconds, 2), "ok": not self.problems,
                "problems": self.problems,
                "output": None if self.final else self.output[-400:]}


def final_line(stdout: str) -> dict[str, Any] | None:
    """The last ``"final": true`` JSON line of ``overlay call --json``."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("final") is True:
            return value
    return None


def place_call(ov: LabOverlay, caller: str, callee: str, seconds: float
               ) -> tuple[int, float, str, dict[str, Any] | None]:
    """``overlay call CALLEE --control CALLER.sock --seconds S --json`` in the caller's host,
    once the callee has the caller as a contact: (rc, wall seconds, output, final line)."""
    assert ov.lab is not None
    ov.add_contact(callee, caller)
    argv = [*OVERLAY, "call", ov.user(callee), "--control", str(ov.sock(caller)),
            "--seconds", f"{seconds:g}", "--json"]
    t0 = time.monotonic()
    try:
        r = ov.lab.run(caller, argv, timeout=seconds + SETUP_MARGIN_S, cwd=str(REPO))
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as exc:
        rc = -9
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        err = f"timed out after {seconds + SETUP_MARGIN_S:g}s"
    return rc, time.monotonic() - t0, (out + "\n" + err).strip(), final_line(out)


def callee_final(ov: LabOverlay, callee: str, caller: str, since: float,
                 timeout: float = 15.0) -> dict[str, Any] | None:
    """The callee's last line of its call from ``caller`` answered after ``since`` (wall
    time), once it ended (the callee ends when the caller's stream does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = ov.control(callee, {"cmd": "calls"})
        except ControlSocketError:
            reply = {}
        entries = [c for c in reply.get("calls") or []
                   if c.get("peer") == ov.user(caller) and not c.get("outgoing")
                   and c.get("started_at", 0) >= since]
        if entries and not entries[-1].get("active"):
            line = entries[-1].get("line")
            return line if isinstance(line, dict) else None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def carried_as(ov: LabOverlay, caller: str, since: float) -> str | None:
    """``carried_as`` of the caller's last ``call_ended`` log line logged after ``since``
    (wall time): ``datagram`` or ``stream``."""
    ended = ov.log_lines(caller, lambda e: e.get("event") == "call_ended", since=since)
    value = ended[-1].get("carried_as") if ended else None
    return value if isinstance(value, str) else None


def judge(final: dict[str, Any] | None, rc: int, expected: str, seconds: float,
          impaired: bool, callee: dict[str, Any] | None = None,
          floors: MosFloors | None = None, relay_carriage: str | None = None,
          carried: str | None = None) -> list[str]:
    """What is wrong with a call's outcome (nothing: it meets the issue's bar).
    ``relay_carriage``: how the call must be carried if it is relayed (``carried``: how the
    caller carried it)."""
    if rc != 0:
        return [f"overlay call exited {rc}"]
    if final is None:
        return ["no final JSON line"]
    problems = judge_line(final, expected, seconds, impaired, floors)
    if relay_carriage is not None and final.get("path") in RELAYED_PATHS \
            and carried != relay_carriage:
        problems.append(f"relayed as {carried!r}, expected {relay_carriage!r}")
    if callee is None:
        problems.append("the callee shows no ended call")
    else:
        problems += [f"callee: {p}" for p in judge_line(callee, expected, seconds, impaired,
                                                                floors)]
    return problems


def judge_line(final: dict[str, Any], expected: str, seconds: float,
               impaired: bool, floors: MosFloors | None = None) -> list[str]:
    """What is wrong with one end's final line."""
    problems = []
    path = final.get("path")
    accepted = {expected} | (ALSO_ACCEPTED_IMPAIRED.get(expected, set()) if impaired else set())
    if path not in accepted:
        problems.append(f"path {path!r}, expected {expected!r}")
    if (path in RELAYED_PATHS) != (final.get("relay") is not None):
        problems.append(f"relay {final.get('relay')!r} on a {path} path")
    limits = thresholds(str(path), impaired, floors)
    mos = final.get("mos")
    if not isinstance(mos, int | float) or mos < limits.min_mos:
        problems.append(f"MOS {mos!r} < {limits.min_mos}")
    loss = final.get("loss_pct")
    if limits.max_loss_pct is not None and (not isinstance(loss, int | float)
                                            or loss > limits.max_loss_pct):
        problems.append(f"loss {loss!r}% > {limits.max_loss_pct}%")
    if not isinstance(final.get("seconds"), int | float) \
            or final["seconds"] < 0.9 * seconds - 0.5:
        problems.append(f"the call lasted {final.get('seconds')!r} s of {seconds:g}")
    # 50 frames a second each way; the callee's frames must have come back
    if not final.get("frames_received") or final["frames_received"] < 25 * seconds:
        problems.append(f"{final.get('frames_received')!r} frames received in {seconds:g} s")
    return problems


def check_call(ov: LabOverlay, caller_kind: str, callee_kind: str, seconds: float,
               impaired: bool, floors: MosFloors | None = None) -> CallOutcome:
    """Client ``CALLER_KIND-1`` calls ``CALLEE_KIND-2`` for ``seconds``, judged."""
    expected = CALL_PATHS[(caller_kind, callee_kind)]
    caller, callee = f"{caller_kind}-1", f"{callee_kind}-2"
    since = time.time() - 1.0
    rc, wall, output, final = place_call(ov, caller, callee, seconds)
    heard = callee_final(ov, callee, caller, since) if rc == 0 else None
    carried = carried_as(ov, caller, since) if rc == 0 else None
    return CallOutcome(caller_kind, callee_kind, expected, rc, wall, final, output, heard,
                       judge(final, rc, expected, seconds, impaired, heard, floors,
                             call_relay_carriage(caller_kind, callee_kind), carried),
                       carried_as=carried)


def run_calls(ov: LabOverlay, pairs: list[tuple[str, str]], seconds: float, impaired: bool,
              parallel: int = PARALLEL, floors: MosFloors | None = None
              ) -> list[CallOutcome]:
    """Every pair's call, up to ``parallel`` at once, never two on one client, at most
    :data:`RELAY_SLOTS` relayed ones at once; outcomes in ``pairs`` order."""
    jobs = []
    relayed = 0
    for a, b in pairs:
        resources = [f"{a}-1", f"{b}-2"]
        if CALL_PATHS[(a, b)] in RELAYED_PATHS:
            resources.append(f"relay-slot-{relayed % RELAY_SLOTS}")
            relayed += 1
        jobs.append((tuple(resources),
                     lambda a=a, b=b: check_call(ov, a, b, seconds, impaired, floors)))
    return run_exclusive(jobs, parallel)


def table(outcomes: list[CallOutcome]) -> str:
    head = (f"{'pair':<24} {'expected':<10} {'path':<10} {'MOS':>5} {'loss%':>6} "
            f"{'late%':>6} {'jit ms':>7} {'p50 ms':>7} {'p95 ms':>7}  ok")
    lines = [head]

    def f(v: Any, w: int) -> str:
        return f"{v:>{w}}" if v is not None else f"{'-':>{w}}"

    for o in outcomes:
        r = o.row()
        path = r["path"] or "error"
        if path in RELAYED_PATHS:  # which relay: the datagram relay (UDP) or the TCP relay
            path += {"datagram": ":udp", "stream": ":tcp"}.get(str(r["carried_as"]), ":?")
        lines.append(f"{r['pair']:<24} {r['expected']:<10} {path:<10} "
                     f"{f(r['mos'], 5)} {f(r['loss_pct'], 6)} {f(r['late_pct'], 6)} "
                     f"{f(r['jitter_ms'], 7)} {f(r['one_way_ms_p50'], 7)} "
                     f"{f(r['one_way_ms_p95'], 7)}  "
                     f"{'yes' if r['ok'] else 'NO: ' + '; '.join(r['problems'])}")
    return "\n".join(lines)


def call_logs(ov: LabOverlay, o: CallOutcome, limit: int = 8) -> str:
    """The caller's and callee's call and path-race log lines (for a failing pair)."""
    out = []
    for host in (f"{o.caller_kind}-1", f"{o.callee_kind}-2"):
        for entry in ov.log_lines(host, lambda e: str(e.get("event", "")).startswith(
                ("call_", "path_selection", "invite_", "offer_", "session_dead")))[-limit:]:
            out.append(f"    {host}: {json.dumps(entry)[:400]}")
    return "\n".join(out)
