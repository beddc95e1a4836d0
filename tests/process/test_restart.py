"""A bootstrap node process restarted with the same --state-dir rejoins with no --bootstrap."""

from __future__ import annotations

import json

from overlay.core import records
from overlay.core.identity import Identity, node_id_for
from overlay.dht import DHTConfig
from tests.helpers.daemons import Daemon, http_get, wait_ready
from tests.helpers.netutil import Network, loopback_ips, wait_for
from tests.helpers.node_keys import write_node_key


async def test_restart_with_state_dir_rejoins_without_bootstrap(tmp_path):
    # the daemon is a public node of the production network: so are the in-process nodes
    net = await Network(6, id_puzzle_bits=DHTConfig().id_puzzle_bits).start()
    ip = loopback_ips(1)[0]
    state = tmp_path / "state"
    write_node_key(state / "node.key")
    listen, http = f"{ip}:4000", f"{ip}:8080"
    daemon = Daemon(["bootstrap", "--listen", listen, "--http", http, "--state-dir", str(state),
                     "--bootstrap", "{}:{}".format(*net.bootstrap.address)], tmp_path / "log")
    try:
        alice = Identity.generate()
        signed = records.presence(alice, "alice", "phone", seq=1, online=False, lifetime_s=600)
        await net.nodes[0].put(signed)

        daemon.start()
        await wait_ready(http, daemon)

        async def sees_alice() -> bool:
            status, body = await http_get(f"http://{http}/v1/users/alice")
            return status == 200 and [r["seq"] for r in body["records"]] == [1]

        await wait_for(sees_alice, timeout=15)
        node_key = Identity.load(state / "node.key")
        assert daemon.terminate() == 0
        peers = json.loads((state / "peers.json").read_text())["peers"]
        assert peers

        net.bootstrap.stop()  # the bootstrap node is gone too: only the saved peers remain
        restarted = Daemon(["bootstrap", "--listen", listen, "--http", http,
                            "--state-dir", str(state)], tmp_path / "log2")
        daemon = restarted.start()
        await wait_ready(http, daemon)
        await wait_for(sees_alice, timeout=15)
        # same identity after restart, and the network knows it again
        assert Identity.load(state / "node.key").public_key == node_key.public_key
        await wait_for(lambda: any(n.knows(node_id_for(node_key.public_key))
                                   for n in net.nodes), timeout=10)
    finally:
        daemon.kill()
        net.stop()
