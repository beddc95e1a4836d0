"""An eclipse attempt on a name, in the NAT lab with real processes.

The honest network: a bootstrap node and four supernodes, each in a /24 of its own as
independent operators are (198.18.100-104.x, routed over the lab's public segment), and
``victim``, a client behind a cone NAT that claims its name. Mallory owns one other /24
(198.18.66.0/24: five addresses on one lab host)
and runs 20 DHT node ids there (4 per address), each holding a forged claim on ``victim`` and a
presence record under it, both signed by mallory's own key, and taking no record others hand
them. Twenty of the 25 DHT nodes are then mallory's, so the k = 20 nodes closest to the name's
key are mostly hers: without defences a lookup asks them and the majority they form names
mallory's key.

What a user notices is checked from outside: ``overlay lookup victim --json``, run from
another lab host, keeps answering with the victim's key (exit 0, no conflict) while the
attack runs, and the attackers are being asked (they are in the network, not ignored for
being unreachable).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

if os.geteuid() != 0:
    pytest.skip("the lab needs root (network namespaces, nftables)", allow_module_level=True)
for _tool in ("ip", "nft"):
    if shutil.which(_tool) is None:
        pytest.skip(f"the lab needs the {_tool!r} command", allow_module_level=True)

from tests.helpers.daemons import overlay_argv  # noqa: E402
from tests.helpers.lab_overlay import LabOverlay  # noqa: E402
from tests.helpers.repo import REPO  # noqa: E402

pytestmark = pytest.mark.netlab

MALLORY_NET = "198.18.66"
MALLORY_IPS = [f"{MALLORY_NET}.{i}" for i in range(1, 6)]
IDS_PER_IP = 4
#: how long lookups run back to back while the attack runs
ATTACK_WINDOW_S = 30.0


def lookup(ov: LabOverlay, name: str) -> tuple[int, dict[str, Any], str]:
    """``overlay lookup NAME --json`` from the ``asker`` host, through the bootstrap node."""
    assert ov.lab is not None
    r = ov.lab.run("asker", overlay_argv(["lookup", name, "--bootstrap", ov.bootstrap_addr,
                                          "--json", "--timeout", "10"], log_json=False),
                   timeout=30, cwd=str(REPO))
    answer = json.loads(r.stdout) if r.stdout.strip() else {}
    return r.returncode, answer, r.stderr


def test_hosts_of_one_subnet_cannot_take_a_name_over(tmp_path: Path) -> None:
    with LabOverlay(tmp_path, clients={"victim": "cone"}, supernodes=4, own_subnets=True,
                    extra_hosts={"evil": "public", "asker": "public"}) as ov:
        assert ov.lab is not None
        victim_key = ov.status("victim")["public_key"]
        deadline = time.monotonic() + 30
        while True:
            rc, answer, err = lookup(ov, "victim")
            if rc == 0 and answer.get("public_key") == victim_key:
                break
            assert time.monotonic() < deadline, f"victim not found before the attack: {rc} " \
                                                f"{answer} {err}"
            time.sleep(1)

        ov.add_subnet("evil", f"{MALLORY_NET}.0/24", MALLORY_IPS)
        attacker = ov.lab.spawn("evil", [
            sys.executable, "-m", "tests.helpers.dht_eclipse_attacker",
            "--ips", ",".join(MALLORY_IPS), "--per-ip", str(IDS_PER_IP),
            "--bootstrap", ov.bootstrap_addr, "--name", "victim"], cwd=str(REPO))
        ready = attacker.read_json(300)  # 20 ids, each paying the id puzzle
        assert ready["event"] == "ready", ready
        impostor_key = ready["impostor_key"]
        assert len(ready["ids"]) == len(MALLORY_IPS) * IDS_PER_IP

        answers = []
        end = time.monotonic() + ATTACK_WINDOW_S
        while (time.monotonic() < end or len(answers) < 3) and len(answers) < 20:
            answers.append(lookup(ov, "victim"))
        asked = 0
        while True:
            line = attacker.read_json(5)
            if line.get("event") == "stats":
                asked = int(line["asked"])
                break
        def outcome(rc: int, answer: dict[str, Any], err: str) -> str:
            key = answer.get("public_key")
            who = {victim_key: "victim's key", impostor_key: "MALLORY's key"}.get(key, key)
            return f"exit {rc}, {who}, conflict={answer.get('conflict')} {err.strip()[:80]}"

        seen = Counter(outcome(*a) for a in answers)
        # the attack is real: mallory's nodes joined and honest nodes ask them
        assert asked > 0, "no honest node ever asked mallory's nodes: no attack happened"
        assert seen == {outcome(0, {"public_key": victim_key, "conflict": False}, ""):
                        len(answers)}, f"lookups of victim while mallory's /24 attacked: {seen}"
