"""Promotion against real kernel NAT and firewall: a publicly reachable client becomes a
supernode (its record enters the directory); clients behind a cone NAT or a stateful firewall
fail the dial-back and are never promoted. A public client run with ``--no-supernode`` is
checked too (its invites say it takes TCP: ``reachable``) and never promoted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

if os.geteuid() != 0 or not shutil.which("nft"):
    pytest.skip("needs root and nftables for the NAT lab", allow_module_level=True)

from overlay.client.control import ControlSocketError, control_request
from tests.helpers.netutil import wait_until
from tools.natlab import Lab

DIRECTORY = """
import asyncio, json, sys
from overlay.core.identity import Identity
from overlay.attach.adapter import ClientSession
async def main():
    s = await ClientSession.connect(sys.argv[1], 4000, Identity.generate(),
                                    expected_node_key=None, lookup_only=True)
    print(json.dumps(["%s:%d" % (r.record.host, r.record.port) for r in await s.directory()]))
asyncio.run(main())
"""




def test_public_client_is_promoted_and_clients_behind_nat_or_firewall_are_not(tmp_path):
    topology = {"hosts": {"boot": {"kind": "public"}, "sn": {"kind": "public"},
                          "pub": {"kind": "public"}, "nat": {"kind": "cone"},
                          "fw": {"kind": "firewalled"}, "optout": {"kind": "public"}}}
    overlay = [sys.executable, "-m", "overlay", "--log-json"]
    with Lab(topology) as lab:
        boot = f"{lab.public_ip('boot')}:4000"

        def start(host: str, args: list[str]) -> None:
            log = open(tmp_path / f"{host}.log", "wb")
            lab.popen(host, [*overlay, *args], stdout=log, stderr=subprocess.STDOUT,
                      cwd=os.getcwd())

        start("boot", ["bootstrap", "--listen", boot])
        start("sn", ["supernode", "--listen", f"{lab.public_ip('sn')}:4000", "--bootstrap", boot,
                     "--heartbeat", "1"])
        for host in ("pub", "nat", "fw"):
            start(host, ["client", "--user", f"user-{host}", "--state-dir", str(tmp_path / host),
                         "--control", str(tmp_path / f"{host}.sock"), "--bootstrap", boot,
                         "--promote-after", "1", "--listen-port", "4100"])
        start("optout", ["client", "--user", "user-optout", "--state-dir",
                         str(tmp_path / "optout"), "--control", str(tmp_path / "optout.sock"),
                         "--bootstrap", boot, "--promote-after", "1", "--listen-port", "4100",
                         "--no-supernode"])

        def status(host: str) -> dict:
            try:
                return control_request(tmp_path / f"{host}.sock", {"cmd": "status"})
            except ControlSocketError:
                return {}

        def checked(host: str) -> dict | None:
            s = status(host)
            reach = (s.get("promotion") or {}).get("reachable")
            return s if reach is not None else None

        pub = wait_until(lambda: (s := status("pub")).get("promotion", {}).get("promoted")
                         and s, 30, f"promotion of the public client ({tmp_path}/pub.log)")
        assert pub["promotion"]["reachable"] == {"host": lab.public_ip("pub"), "tcp": True,
                                                 "udp": True}
        promoted_at = pub["promotion"]["supernode"]
        assert promoted_at == f"{lab.public_ip('pub')}:4100"

        def in_directory() -> bool:
            r = lab.run("boot", [sys.executable, "-c", DIRECTORY, lab.public_ip("boot")],
                        timeout=20)
            return r.returncode == 0 and promoted_at in json.loads(r.stdout)

        wait_until(in_directory, 20, "the promoted supernode's record in the directory")

        for host in ("nat", "fw"):
            s = wait_until(lambda h=host: checked(h), 30, f"{host} dial-back check")
            reach = s["promotion"]["reachable"]
            assert (reach["tcp"], reach["udp"]) == (False, False), (host, reach)
            assert s["promotion"]["promoted"] is False
            assert s["state"] == "attached"
        # the NATed client's supernode saw it at its router's public address, not its own
        assert checked("nat")["promotion"]["reachable"]["host"] == lab.public_ip("nat")
        # opted out: checked all the same (what its invites and answers say as reachable),
        # and, up as long as the promoted one was, not a supernode
        s = wait_until(lambda: checked("optout"), 30, "optout dial-back check")
        assert s["promotion"]["reachable"] == {"host": lab.public_ip("optout"), "tcp": True,
                                               "udp": True}
        assert s["promotion"]["enabled"] is False and s["promotion"]["promoted"] is False
        assert status("optout")["promotion"]["supernode"] is None
