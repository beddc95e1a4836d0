"""Behaviour of the NAT lab (tools/natlab) against the real kernel: no mocks.

Each test runs small probe programs (tools/natlab/probe.py) inside lab hosts and checks what a
user of each router kind would notice. Needs root, ``ip`` and ``nft``; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if os.geteuid() != 0:
    pytest.skip("natlab needs root (network namespaces, nftables)", allow_module_level=True)
for _tool in ("ip", "nft"):
    if shutil.which(_tool) is None:
        pytest.skip(f"natlab needs the {_tool!r} command", allow_module_level=True)

from tests.helpers.repo import REPO  # noqa: E402
from tools.natlab import (  # noqa: E402  (after the skip checks on purpose)
    Lab,
    LabError,
    LabProcess,
    Topology,
    TopologyError,
    list_netns,
    probe_argv,
)

pytestmark = pytest.mark.netlab

DELAY_MS = 100.0
LOSS_PCT = 30.0
TOPOLOGY: dict[str, Any] = {
    "hosts": {
        "s1": {"kind": "public"},
        "s2": {"kind": "public"},
        "fw": {"kind": "firewalled"},
        "c1": {"kind": "cone"},
        "c2": {"kind": "cone"},
        "y1": {"kind": "symmetric"},
        "y2": {"kind": "symmetric"},
        "t1": {"kind": "tcp-only"},
        "slow": {"kind": "public", "netem": {"delay_ms": DELAY_MS}},
        "slowc": {"kind": "cone", "netem": {"delay_ms": DELAY_MS / 2}},
        "lossy": {"kind": "public", "netem": {"loss_pct": LOSS_PCT}},
    }
}


# ------------------------------------------------------------------------ helpers


def leftovers(prefix: str) -> list[str]:
    """Namespaces anywhere, and links in the root namespace, that carry the prefix."""
    found = [ns for ns in list_netns() if ns.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [line for line in links.splitlines() if prefix in line]
    return found


def start_server(lab: Lab, host: str, kind: str) -> tuple[LabProcess, int]:
    """Start a probe server and wait until it reports that it is bound."""
    proc = lab.spawn(host, probe_argv(kind))
    ready = proc.read_json(10.0)
    assert ready["event"] == "ready", ready
    return proc, int(ready["port"])


def probe(lab: Lab, host: str, *args: str, router: bool = False,
          timeout: float = 20.0) -> dict[str, Any]:
    """Run a client probe to completion and return its JSON result."""
    res = lab.run(host, probe_argv(*args), router=router, timeout=timeout)
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert lines, f"probe {args} in {host} printed nothing; stderr: {res.stderr}"
    result: dict[str, Any] = lines[-1]
    return result


def assert_silent(server: LabProcess, within: float = 0.3) -> None:
    """The server logged nothing (called after the client already gave up waiting)."""
    with pytest.raises(TimeoutError):
        event = server.read_json(within)
        pytest.fail(f"server unexpectedly got traffic: {event}")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(TOPOLOGY) as lab:
        yield lab
    assert leftovers(lab.prefix) == []


@pytest.fixture(scope="module")
def reflectors(lab: Lab) -> dict[str, str]:
    """UDP reflectors on s1 and s2: host -> "ip:port"."""
    out = {}
    for host in ("s1", "s2"):
        _proc, port = start_server(lab, host, "udp-reflector")
        out[host] = f"{lab.public_ip(host)}:{port}"
    return out


@pytest.fixture(scope="module")
def tcp_s1(lab: Lab) -> tuple[str, str]:
    """A TCP server on s1 that tells each client its source address: (ip, port)."""
    _proc, port = start_server(lab, "s1", "tcp-server")
    return lab.public_ip("s1"), str(port)


# ---------------------------------------------------------------- address plan


def test_address_plan_is_deterministic(lab: Lab) -> None:
    assert lab.host_ip("s1") == lab.public_ip("s1") == "198.18.0.11"
    assert lab.host_ip("fw") == lab.public_ip("fw") == "198.18.0.13"
    assert lab.router_wan_ip("fw") == "198.18.0.133"
    assert lab.host_ip("c1") == "198.19.4.2"
    assert lab.public_ip("c1") == lab.router_wan_ip("c1") == "198.18.0.14"
    assert lab.router_lan_ip("c1") == "198.19.4.1"
    desc = lab.describe()
    assert set(desc["hosts"]) == set(TOPOLOGY["hosts"])
    for host in lab.hosts:
        addrs = lab.run(host, ["ip", "-4", "-o", "addr", "show"], check=True).stdout
        assert f" {lab.host_ip(host)}/" in addrs
        assert " 127.0.0.1/8 " in addrs  # loopback is up and addressed


def test_topology_validation() -> None:
    with pytest.raises(TopologyError, match="kind must be one of"):
        Topology.from_dict({"hosts": {"a": {"kind": "full-cone"}}})
    with pytest.raises(TopologyError, match="unknown netem keys"):
        Topology.from_dict({"hosts": {"a": {"kind": "cone", "netem": {"delay": 5}}}})
    with pytest.raises(TopologyError, match="names must match"):
        Topology.from_dict({"hosts": {"a b": {"kind": "public"}}})
    with pytest.raises(TopologyError, match="non-empty"):
        Topology.from_dict({"hosts": {}})
    with pytest.raises(TopologyError, match="for kind 'mapping' only"):
        Topology.from_dict({"hosts": {"a": {"kind": "cone", "max_lifetime_s": 5}}})
    with pytest.raises(TopologyError, match=r"an integer in 1\.\.86400"):
        Topology.from_dict({"hosts": {"a": {"kind": "mapping", "max_lifetime_s": 0}}})
    assert Topology.from_dict({"hosts": {"a": {"kind": "mapping", "max_lifetime_s": 5}}}
                              ).host("a").max_lifetime_s == 5


def test_every_router_drops_unsolicited_input(lab: Lab) -> None:
    for host in lab.hosts:
        if lab.kind(host) == "public":
            continue
        chain = lab.run(
            host, ["nft", "list", "chain", "inet", "natlab", "input"], router=True, check=True
        ).stdout
        assert "policy drop;" in chain
        assert "ct state established,related accept" in chain


# ------------------------------------------------------------------ public host


def test_public_host_accepts_unsolicited_tcp_and_udp(
    lab: Lab, reflectors: dict[str, str], tcp_s1: tuple[str, str]
) -> None:
    res = probe(lab, "s2", "tcp-connect", *tcp_s1)
    assert res["ok"], res
    assert res["seen"][0] == lab.public_ip("s2")

    res = probe(lab, "s2", "udp-query", reflectors["s1"], "--timeout", "2")
    seen = res["results"][0]["seen"]
    assert seen == [lab.public_ip("s2"), res["local_port"]]  # no NAT on the way


# --------------------------------------------------------------- firewalled host


def test_firewalled_outbound_works_with_own_public_address(
    lab: Lab, reflectors: dict[str, str], tcp_s1: tuple[str, str]
) -> None:
    res = probe(lab, "fw", "tcp-connect", *tcp_s1)
    assert res["ok"], res
    assert res["seen"][0] == lab.public_ip("fw") == lab.host_ip("fw")

    res = probe(lab, "fw", "udp-query", reflectors["s1"], reflectors["s2"])
    for result in res["results"]:
        assert result["seen"] == [lab.public_ip("fw"), res["local_port"]]


def test_firewalled_rejects_unsolicited_inbound(lab: Lab) -> None:
    server, port = start_server(lab, "fw", "tcp-server")
    res = probe(lab, "s1", "tcp-connect", lab.public_ip("fw"), str(port), "--timeout", "1")
    assert not res["ok"], res
    assert_silent(server)
    # Control: the server is up and reachable from inside (the router is on its LAN).
    res = probe(lab, "fw", "tcp-connect", lab.host_ip("fw"), str(port), router=True)
    assert res["ok"], res
    assert server.read_json(5.0)["event"] == "accept"

    udp_server, udp_port = start_server(lab, "fw", "udp-reflector")
    probe(lab, "s1", "udp-send", lab.public_ip("fw"), str(udp_port), "--count", "3")
    assert_silent(udp_server)


# ------------------------------------------------------------ cone vs symmetric


@pytest.mark.parametrize(("host", "same_port"), [("c1", True), ("y1", False)])
def test_mapping_behaviour(
    lab: Lab, reflectors: dict[str, str], host: str, same_port: bool
) -> None:
    res = probe(lab, host, "udp-query", reflectors["s1"], reflectors["s2"])
    seen = [r["seen"] for r in res["results"]]
    assert all(s is not None for s in seen), res
    assert {s[0] for s in seen} == {lab.public_ip(host)}  # NATed to the router's WAN address
    ports = {s[1] for s in seen}
    if same_port:
        assert len(ports) == 1, f"cone NAT must map endpoint-independently: {res}"
    else:
        assert len(ports) == 2, f"symmetric NAT must map per destination: {res}"


def hole_punch(
    lab: Lab, a: str, b: str, reflector: str, timeout: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    procs = {h: lab.spawn(h, probe_argv("punch", "--reflector", reflector,
                                        "--timeout", str(timeout))) for h in (a, b)}  # fmt: skip
    reflexive = {h: p.read_json(10.0)["addr"] for h, p in procs.items()}
    assert all(reflexive.values()), reflexive
    procs[a].write_line(f"{reflexive[b][0]} {reflexive[b][1]}")
    procs[b].write_line(f"{reflexive[a][0]} {reflexive[a][1]}")
    ra = procs[a].read_json(timeout + 5.0)
    rb = procs[b].read_json(timeout + 5.0)
    return ra, rb, reflexive


def test_hole_punching_between_cones_succeeds(lab: Lab, reflectors: dict[str, str]) -> None:
    ra, rb, reflexive = hole_punch(lab, "c1", "c2", reflectors["s1"], timeout=5.0)
    assert ra["ok"] and rb["ok"], (ra, rb)
    # Endpoint-independent mapping: each side sees the other at its announced address.
    assert ra["peer_seen"] == reflexive["c2"]
    assert rb["peer_seen"] == reflexive["c1"]


def test_hole_punching_between_symmetric_nats_fails(lab: Lab, reflectors: dict[str, str]) -> None:
    start = time.monotonic()
    ra, rb, _ = hole_punch(lab, "y1", "y2", reflectors["s1"], timeout=2.0)
    assert not ra["ok"] and not rb["ok"], (ra, rb)
    assert ra["received"] == rb["received"] == 0
    assert time.monotonic() - start < 10.0


# ---------------------------------------------------------------------- tcp-only


def test_tcp_only_allows_outbound_tcp(lab: Lab, tcp_s1: tuple[str, str]) -> None:
    res = probe(lab, "t1", "tcp-connect", *tcp_s1)
    assert res["ok"], res
    assert res["seen"][0] == lab.public_ip("t1")


def test_tcp_only_blocks_outbound_udp(lab: Lab) -> None:
    reflector, port = start_server(lab, "s2", "udp-reflector")
    res = probe(lab, "t1", "udp-query", f"{lab.public_ip('s2')}:{port}", "--timeout", "1")
    assert res["results"][0]["seen"] is None
    assert_silent(reflector)


def test_tcp_only_blocks_all_inbound(lab: Lab) -> None:
    server, port = start_server(lab, "t1", "tcp-server")
    for target in (lab.public_ip("t1"), lab.host_ip("t1")):
        res = probe(lab, "s1", "tcp-connect", target, str(port), "--timeout", "1")
        assert not res["ok"], res
    assert_silent(server)

    udp_server, udp_port = start_server(lab, "t1", "udp-reflector")
    probe(lab, "s1", "udp-send", lab.public_ip("t1"), str(udp_port), "--count", "3")
    assert_silent(udp_server)

    # Control: both servers are alive and reachable from the router.
    assert probe(lab, "t1", "tcp-connect", lab.host_ip("t1"), str(port), router=True)["ok"]


# ------------------------------------------------------------------------- netem


def test_netem_delay_on_public_link(lab: Lab, reflectors: dict[str, str]) -> None:
    ip, port = reflectors["s1"].split(":")
    res = probe(lab, "slow", "udp-ping", ip, port, "--count", "3")
    assert res["lost"] == 0, res
    # delay_ms applies to each direction of the link: a round trip crosses it twice.
    assert min(res["rtts_ms"]) >= 2 * DELAY_MS, res

    baseline = probe(lab, "s2", "udp-ping", ip, port, "--count", "3")
    assert max(baseline["rtts_ms"]) < DELAY_MS, baseline


def test_netem_delay_on_router_wan_link(lab: Lab, reflectors: dict[str, str]) -> None:
    ip, port = reflectors["s1"].split(":")
    res = probe(lab, "slowc", "udp-ping", ip, port, "--count", "3")
    assert res["lost"] == 0, res
    assert min(res["rtts_ms"]) >= DELAY_MS, res


def test_netem_loss(lab: Lab, reflectors: dict[str, str]) -> None:
    ip, port = reflectors["s2"].split(":")
    # The warm-up ends at the first echo. ARP crosses the lossy wire too, and the kernel gives
    # up on a neighbour after 3 unanswered requests a second apart (~1 in 8 at 30 % each way,
    # on both ends), so 5 s of warm-up missed about one run in six: allow 20 s.
    res = probe(lab, "lossy", "udp-burst", ip, port, "--count", "200", "--wait", "0.5",
                "--warmup", "20", timeout=40.0)
    assert res["warmed_up"], res
    # 30% loss in each direction: ~49% come back; outside 25..75% is practically impossible.
    assert 0.25 * 200 <= res["received"] <= 0.75 * 200, res


# ------------------------------------------------------------------------ cleanup

SMALL = {"hosts": {"p": {"kind": "public"}, "n": {"kind": "cone", "netem": {"delay_ms": 1}}}}

OWNER_SCRIPT = """
import json, sys, threading
from tools.natlab import Lab
lab = Lab(json.loads(sys.argv[1])).__enter__()
sleeper = lab.popen("n", ["sleep", "600"])
print(lab.prefix, sleeper.pid, flush=True)
threading.Event().wait()
"""


def start_owner() -> tuple[subprocess.Popen[str], str, int]:
    """A separate process that builds a lab, starts a sleeper in it and waits forever."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, json.dumps(SMALL)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    prefix, pid = proc.stdout.readline().split()
    assert leftovers(prefix), "lab should exist while its owner runs"
    return proc, prefix, int(pid)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_teardown_when_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab(SMALL) as lab:
        prefix = lab.prefix
        sleeper = lab.popen("n", ["sleep", "600"])
        assert leftovers(prefix)
        raise RuntimeError("boom")
    assert leftovers(prefix) == []
    assert sleeper.poll() is not None
    lab.close()  # idempotent
    assert lab.closed


def test_tc_netem_backend_or_clean_failure() -> None:
    """Forcing ``tc netem``: it works where the kernel has sch_netem; elsewhere (e.g. kernels
    built without CONFIG_NET_SCH_NETEM) start() fails with a clear error and leaves nothing."""
    lab = Lab(SMALL, netem_backend="tc")
    try:
        lab.start()
    except LabError as exc:
        assert "netem" in str(exc)
        assert lab.closed
        assert leftovers(lab.prefix) == []
        return
    with lab:
        qdisc = lab.run("n", ["tc", "qdisc", "show"], router=True, check=True).stdout
        assert "netem" in qdisc
    assert leftovers(lab.prefix) == []


def test_prefix_collision_leaves_the_other_lab_alone(lab: Lab, tcp_s1: tuple[str, str]) -> None:
    before = sorted(ns for ns in list_netns() if ns.startswith(f"{lab.prefix}-"))
    with pytest.raises(LabError, match="in use"):
        Lab(SMALL, prefix=lab.prefix).start()
    assert sorted(ns for ns in list_netns() if ns.startswith(f"{lab.prefix}-")) == before
    assert probe(lab, "c1", "tcp-connect", *tcp_s1)["ok"]  # and it still works


def test_teardown_on_sigterm() -> None:
    proc, prefix, sleeper = start_owner()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 128 + signal.SIGTERM
    assert leftovers(prefix) == []
    wait_for(lambda: not pid_alive(sleeper), 5.0, "the sleeper to die")


def test_cleanup_cli_after_sigkill() -> None:
    proc, prefix, sleeper = start_owner()
    proc.kill()  # no atexit, no handler: leaves everything behind
    proc.wait(5)
    assert leftovers(prefix)
    cli = [sys.executable, "-m", "tools.natlab"]
    listed = subprocess.run([*cli, "list"], cwd=REPO, capture_output=True, text=True, check=True)
    assert f"{prefix}:" in listed.stdout and "stale" in listed.stdout
    subprocess.run([*cli, "cleanup", prefix], cwd=REPO, capture_output=True, check=True)
    assert leftovers(prefix) == []
    wait_for(lambda: not pid_alive(sleeper), 5.0, "the sleeper to die")
    # Idempotent: a second cleanup of the same prefix is fine.
    subprocess.run([*cli, "cleanup", prefix], cwd=REPO, capture_output=True, check=True)


def test_cli_up_then_ctrl_c(tmp_path: Path) -> None:
    topo = tmp_path / "topo.toml"
    topo.write_text('[hosts.a]\nkind = "public"\n\n[hosts.b]\nkind = "symmetric"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.natlab", "up", str(topo), "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        desc = json.loads(proc.stdout.readline())
        assert proc.stdout.readline().strip() == f"ready {desc['prefix']}"
        assert desc["hosts"]["b"]["public_ip"] == "198.18.0.12"
        assert f"{desc['prefix']}-r-b" in list_netns()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert leftovers(desc["prefix"]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
