"""Calls obey the file transfer's consent rules: a stranger cannot make a client take a call.

Real ``overlay client`` processes; the attacker, mallory, has only what any user has: her own
key and name, a client of her own and the ``overlay`` command. Bob keeps the default policy
(``--accept-from contacts``). Mallory's ``overlay call bob`` is kept as a contact request:
no call runs on bob's side (his ``calls`` stay empty), mallory's exits 5 (not accepted) with
no line on stdout. Once bob adds mallory as a contact, her call goes through.
"""

from __future__ import annotations

import json

from overlay.cli.common import EXIT_NOT_ACCEPTED
from tests.adversary.test_consent import Clients, ask, run
from tests.helpers.netutil import wait_for
from tests.helpers.overlay_net import ProcessOverlay


async def test_strangers_call_is_a_contact_request_not_a_call(tmp_path):
    net = await ProcessOverlay(tmp_path, 1).start()
    clients = Clients(tmp_path, net)
    try:
        await clients.start("bob")
        await clients.start("mallory")
        await clients.finds("mallory", "bob")
        bob = str(clients.sock("bob"))

        code, out, err = await run("call", "bob", "--control", str(clients.sock("mallory")),
                                   "--seconds", "2", "--wait", "3", "--json")
        assert code == EXIT_NOT_ACCEPTED, err
        assert out == ""
        requests = (await ask(clients.sock("bob"), {"cmd": "requests"}))["requests"]
        assert [r["user"] for r in requests] == ["mallory"]
        assert (await ask(clients.sock("bob"), {"cmd": "calls"}))["calls"] == []

        # bob makes mallory a contact: now her call is answered by bob's client
        code, _, err = await run("contacts", "add", "mallory", "--control", bob)
        assert code == 0, err
        code, out, err = await run("call", "bob", "--control", str(clients.sock("mallory")),
                                   "--seconds", "2", "--json")
        assert code == 0, err
        assert json.loads(out.splitlines()[-1])["frames_received"] > 0

        async def bob_took_it() -> bool:
            calls = (await ask(clients.sock("bob"), {"cmd": "calls"})).get("calls") or []
            return [c["peer"] for c in calls] == ["mallory"]

        await wait_for(bob_took_it, timeout=10)
    finally:
        clients.stop()
        net.stop()
