"""Port mapping in the NAT lab: a ``mapping`` router (symmetric NAT whose router runs
``tools/natlab/portmapd.py``) grants PCP mappings with real nft DNAT rules.

- ``test_mapping_reaches_the_listener_is_renewed_and_deleted``: a host behind a ``mapping``
  router maps its TCP listener and its UDP reflector (``tests/helpers/portmap_client``, the
  client's own :class:`~overlay.media.portmap_io.PortMapping`); the router's nft table holds
  the DNAT rules; a host on the public segment reaches both through the mapped addresses (and
  not without a mapping: the control); the router grants at most 4 s, so the client renews;
  closing deletes the mappings and their rules. A ``symmetric`` router (no responder) leaves
  the client without a mapping, quickly.
- ``test_pairs_with_a_mapping_side_go_direct``: overlay clients behind ``symmetric``,
  ``tcp-only``, ``cone`` and ``mapping`` routers send each other files (:data:`PAIRS`):
  every pair delivers directly with technique ``mapping`` (the other side dials the mapped
  address, or punches through the mapped UDP socket: :data:`DIRECT`), where a ``symmetric``
  or ``tcp-only`` side with a NATed peer needs a relay (tests/lab/test_connectivity_lab.py);
  the client deletes its mappings when it stops.
- ``test_with_no_port_mapping_the_same_pair_needs_a_relay``: the control, with
  ``--no-port-mapping``.
- ``test_upnp_igd_only_router``: a ``mapping`` router that speaks UPnP IGD only (nothing on
  port 5351): the client maps by UPnP (``status`` says ``"method": "upnp"``), the pair goes
  direct with technique ``mapping``, and the client deletes by UPnP when it stops.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lab_overlay import LabOverlay, lab_available, sha256_file
from tests.helpers.repo import REPO
from tools.natlab import Lab, LabProcess, probe_argv

_ok, _why = lab_available()
if not _ok:
    pytest.skip(_why, allow_module_level=True)

pytestmark = pytest.mark.netlab

MAX_LIFETIME_S = 4
#: every pair must deliver directly with technique "mapping"; without the mapping each of
#: them goes through a relay (tests/lab/test_connectivity_lab.py's table)
PAIRS = [("sym-1", "map-1"), ("map-1", "sym-1"), ("tcp-1", "map-1"), ("map-1", "tcp-1"),
         ("cone-1", "map-2"), ("map-1", "map-2")]
#: the paths a mapping opens: a dial to the mapped listener (or from the peer through ours),
#: or a UDP punch through the mapped UDP socket, which wins where the caller's invite took
#: 0.1 s or more to be answered (a loaded machine: UDP first, path_opening) and the file is
#: too short to move to TCP
DIRECT = ("direct-tcp", "udp-punch")


def nft_table(lab: Lab, host: str) -> str:
    return str(lab.run(host, ["nft", "list", "table", "ip", "natlab_portmap"], router=True,
                       check=True).stdout)


def portmap_client(lab: Lab, host: str, protocol: str, port: int) -> LabProcess:
    return lab.spawn(host, [sys.executable, "-m", "tests.helpers.portmap_client",
                            "--protocol", protocol, "--port", str(port)], cwd=REPO)


def next_event(proc: LabProcess, timeout: float, skip: tuple[str, ...] = ()
               ) -> dict[str, Any]:
    """The process's next JSON event line not in ``skip``."""
    deadline = time.monotonic() + timeout
    while True:
        event = proc.read_json(max(0.0, deadline - time.monotonic()))
        assert isinstance(event, dict), event
        if event.get("event") not in skip:
            return event


def responder_events(lab: Lab, host: str, until: int, kind: str) -> list[dict[str, Any]]:
    """The router's responder's events up to the ``until``-th of kind ``kind``."""
    events: list[dict[str, Any]] = []
    while sum(e.get("event") == kind for e in events) < until:
        events.append(lab.portmapd(host).read_json(10))
    return events


@pytest.mark.timeout(90)
def test_mapping_reaches_the_listener_is_renewed_and_deleted() -> None:
    topo = {"hosts": {"peer": {"kind": "public"},
                      "m": {"kind": "mapping", "max_lifetime_s": MAX_LIFETIME_S},
                      "s": {"kind": "symmetric"}}}
    with Lab(topo) as lab:
        tcp_server = lab.spawn("m", probe_argv("tcp-server"))
        tcp_port = tcp_server.read_json(10)["port"]
        udp_server = lab.spawn("m", probe_argv("udp-reflector"))
        udp_port = udp_server.read_json(10)["port"]
        # the control: before any mapping the symmetric NAT lets nothing in
        cold = lab.run("peer", probe_argv("tcp-connect", lab.public_ip("m"), str(tcp_port),
                                          "--timeout", "1"), timeout=10)
        assert json.loads(cold.stdout)["ok"] is False, cold.stdout

        started = time.monotonic()
        tcp_map = portmap_client(lab, "m", "tcp", tcp_port)
        udp_map = portmap_client(lab, "m", "udp", udp_port)
        tcp_ev, udp_ev = next_event(tcp_map, 10), next_event(udp_map, 10)
        elapsed = time.monotonic() - started
        for ev in (tcp_ev, udp_ev):
            assert ev["event"] == "mapped", ev
            assert ev["method"] == "pcp" and ev["lifetime"] == MAX_LIFETIME_S, ev
            assert ev["gateway"] == lab.router_lan_ip("m"), ev
            assert ev["external"][0] == lab.public_ip("m"), ev
        ext_tcp, ext_udp = tuple(tcp_ev["external"]), tuple(udp_ev["external"])
        print(f"\nmapped tcp {tcp_port} -> {ext_tcp}, udp {udp_port} -> {ext_udp} in "
              f"{tcp_ev['seconds']:.3f} / {udp_ev['seconds']:.3f} s "
              f"(both processes up and mapped in {elapsed:.2f} s)")

        table = nft_table(lab, "m")
        host = lab.host_ip("m")
        assert f"tcp dport {ext_tcp[1]} dnat to {host}:{tcp_port}" in table, table
        assert f"udp dport {ext_udp[1]} dnat to {host}:{udp_port}" in table, table

        # the peer on the public segment reaches both through the mapped addresses
        res = lab.run("peer", probe_argv("tcp-connect", ext_tcp[0], str(ext_tcp[1])),
                      timeout=10)
        answer = json.loads(res.stdout)
        assert answer["ok"] is True, res.stdout
        assert answer["seen"][0] == lab.public_ip("peer"), answer  # DNAT only: peer seen as is
        res = lab.run("peer", probe_argv("udp-query", f"{ext_udp[0]}:{ext_udp[1]}"), timeout=10)
        results = json.loads(res.stdout)["results"]
        assert results[0]["seen"] is not None and results[0]["seen"][0] == lab.public_ip("peer")

        # renewed at half the router's 4 s, with the same external address; after the
        # second renewal of the TCP mapping its first lifetime is over, and it still works
        for proc, ext in ((tcp_map, ext_tcp), (udp_map, ext_udp), (tcp_map, ext_tcp)):
            ev = next_event(proc, MAX_LIFETIME_S + 2)
            assert ev["event"] == "renewed" and tuple(ev["external"]) == ext, ev
        assert time.monotonic() - started > MAX_LIFETIME_S
        res = lab.run("peer", probe_argv("tcp-connect", ext_tcp[0], str(ext_tcp[1])),
                      timeout=10)
        assert json.loads(res.stdout)["ok"] is True

        # closing deletes the mappings at the router, and their rules
        for proc in (tcp_map, udp_map):
            proc.write_line("close")
            ev = next_event(proc, 5, skip=("renewed",))
            assert ev == {"event": "deleted", "confirmed": True}, ev
            assert proc.wait(5) == 0
        events = responder_events(lab, "m", 2, "delete")
        assert [e["event"] for e in events].count("map") == 2
        assert "renew" in [e["event"] for e in events] and "expire" not in str(events)
        table = nft_table(lab, "m")
        assert "dnat" not in table and "snat" not in table, table
        res = lab.run("peer", probe_argv("tcp-connect", ext_tcp[0], str(ext_tcp[1]),
                                         "--timeout", "1"), timeout=10)
        assert json.loads(res.stdout)["ok"] is False, res.stdout

        # behind a router without a responder: no mapping, and the answer comes at once
        started = time.monotonic()
        none = portmap_client(lab, "s", "tcp", 4321)
        ev = next_event(none, 10)
        assert ev["event"] == "unavailable", ev
        assert time.monotonic() - started < 3.0
        none.write_line("close")
        none.wait(5)


@pytest.mark.timeout(240)
def test_pairs_with_a_mapping_side_go_direct(tmp_path: Path) -> None:
    clients = {"sym-1": "symmetric", "map-1": "mapping", "map-2": "mapping",
               "tcp-1": "tcp-only", "cone-1": "cone"}
    with LabOverlay(tmp_path, clients) as ov:
        assert ov.lab is not None
        deadline = time.monotonic() + 15
        while True:
            status = ov.status("map-1").get("port_mapping") or {}
            if all((status.get(p) or {}).get("state") == "mapped" for p in ("tcp", "udp")):
                break
            assert time.monotonic() < deadline, f"no mappings: {status}"
            time.sleep(0.1)
        print(f"\nmap-1 port mapping: {json.dumps(status)}")
        assert status["gateway"] == ov.lab.router_lan_ip("map-1")
        assert status["tcp"]["external"].startswith(ov.lab.public_ip("map-1") + ":")
        sym = ov.status("sym-1").get("port_mapping") or {}
        assert (sym.get("tcp") or {}).get("state") in ("requesting", "unavailable"), sym

        rows = []
        for src, dst in PAIRS:
            name = f"{src}-to-{dst}-{os.urandom(3).hex()}.bin"
            file = ov.make_file(src, name, 1 << 20)
            res = ov.send(src, dst, file, timeout=90)
            assert res.ok, res.describe()
            assert res.json is not None
            rows.append(f"{src} -> {dst}: {res.json.get('path')} "
                        f"({res.json.get('technique')}) in {res.json.get('seconds')} s")
            assert res.json.get("path") in DIRECT, res.describe()
            assert res.json.get("technique") == "mapping", res.describe()
            assert res.json.get("relay") is None
            received = ov.wait_inbox_file(dst, name, timeout=10)
            assert sha256_file(received) == sha256_file(file)
        print("\n".join(rows))

        # the client deletes its mappings when it stops
        ov.stop_daemon("map-1")
        events = responder_events(ov.lab, "map-1", 2, "delete")
        assert {e["protocol"] for e in events if e["event"] == "delete"} == {"tcp", "udp"}
        table = nft_table(ov.lab, "map-1")
        assert "dnat" not in table, table


@pytest.mark.timeout(180)
def test_with_no_port_mapping_the_same_pair_needs_a_relay(tmp_path: Path) -> None:
    """The control: the same routers, clients started with ``--no-port-mapping``: nothing is
    mapped and symmetric -> mapping goes through a relay (the symmetric NAT as it is)."""
    clients = {"sym-1": "symmetric", "map-1": "mapping"}
    with LabOverlay(tmp_path, clients, client_args=("--no-port-mapping",)) as ov:
        assert ov.status("map-1").get("port_mapping") is None
        file = ov.make_file("sym-1", "control.bin", 1 << 16)
        res = ov.send("sym-1", "map-1", file, timeout=90)
        assert res.ok and res.json is not None, res.describe()
        assert res.json.get("path") == "relay" and res.json.get("technique") == "relay", \
            res.describe()
        assert ov.lab is not None
        assert "dnat" not in nft_table(ov.lab, "map-1")


@pytest.mark.timeout(180)
def test_upnp_igd_only_router(tmp_path: Path) -> None:
    clients = {"sym-1": "symmetric", "igd-1": "mapping"}
    with LabOverlay(tmp_path, clients, host_options={"igd-1": {"methods": ["upnp"]}}) as ov:
        assert ov.lab is not None
        deadline = time.monotonic() + 15
        while True:
            status = ov.status("igd-1").get("port_mapping") or {}
            if all((status.get(p) or {}).get("state") == "mapped" for p in ("tcp", "udp")):
                break
            assert time.monotonic() < deadline, f"no mappings: {status}"
            time.sleep(0.1)
        print(f"\nigd-1 port mapping: {json.dumps(status)}")
        assert status["tcp"]["method"] == status["udp"]["method"] == "upnp", status
        assert status["tcp"]["external"].startswith(ov.lab.public_ip("igd-1") + ":")
        assert "dnat" in nft_table(ov.lab, "igd-1")
        file = ov.make_file("sym-1", "igd.bin", 1 << 20)
        res = ov.send("sym-1", "igd-1", file, timeout=90)
        assert res.ok and res.json is not None, res.describe()
        assert res.json["path"] in DIRECT and res.json["technique"] == "mapping", \
            res.describe()
        assert sha256_file(ov.wait_inbox_file("igd-1", "igd.bin")) == sha256_file(file)
        ov.stop_daemon("igd-1")
        events = responder_events(ov.lab, "igd-1", 2, "delete")
        deletes = [e for e in events if e["event"] == "delete"]
        assert {(e["protocol"], e["via"]) for e in deletes} == {("tcp", "upnp"), ("udp", "upnp")}
        assert "dnat" not in nft_table(ov.lab, "igd-1")
