"""The caller's relay connection opened while it waits for the answer
(overlay.media.relay_preconnect): its hello goes on that connection, so a callee the relay
holds pairs with no TCP handshake after the answer; a connection that went stale, or failed,
gives way to a new one; one nobody used is closed. Real in-process supernodes on loopback."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from overlay.media import relay_preconnect
from overlay.media.relay_preconnect import RelayPreconnect
from overlay.relay.budget import BudgetConfig
from overlay.relay.client import relay_connect
from overlay.relay.protocol import ROLE_CALLEE, TOKEN_BYTES
from tests.helpers.netutil import wait_for
from tests.unit.test_relay import MBIT, PORT, call, supernode

KEY = b"\x01" * 32


async def test_the_hello_goes_on_the_connection_opened_ahead() -> None:
    async with supernode(relay=BudgetConfig(total_bps=10 * MBIT)) as (node, ip):
        token = os.urandom(TOKEN_BYTES)
        pre = RelayPreconnect()
        pre.open([(ip, PORT, KEY)], ["127.0.0.1"])
        assert pre.addresses == [(ip, PORT)]
        callee = asyncio.create_task(relay_connect(ip, PORT, token, ROLE_CALLEE, timeout=5))
        await wait_for(lambda: len(node.relay.early) == 1)
        opened = pre.take(ip, PORT)
        assert opened is not None and pre.take(ip, PORT) is None  # taken once
        ahead = (await opened).getsockname()
        a = await call(node, ip, token, timeout=5, connected=opened)
        b = await callee
        assert a.transport.get_extra_info("sockname") == ahead  # no new connection
        await a.send(b"first bytes")
        assert await b.recv() == b"first bytes"
        await asyncio.gather(a.close(), b.close())
        pre.close()


async def test_a_stale_or_failed_connection_gives_way_to_a_new_one() -> None:
    async with supernode(relay=BudgetConfig(total_bps=10 * MBIT)) as (node, ip):
        # the connection opened ahead is dead (as after the relay dropped it)
        token = os.urandom(TOKEN_BYTES)
        pre = RelayPreconnect()
        pre.open([(ip, PORT, KEY)], ["127.0.0.1"])
        opened = pre.take(ip, PORT)
        assert opened is not None
        sock = await opened
        dead = sock.getsockname()
        sock.shutdown(socket.SHUT_RDWR)
        callee = asyncio.create_task(relay_connect(ip, PORT, token, ROLE_CALLEE, timeout=5))
        a = await call(node, ip, token, timeout=5, connected=opened)
        b = await callee
        assert a.transport.get_extra_info("sockname") != dead
        assert sock.fileno() == -1  # the dead one was closed
        await asyncio.gather(a.close(), b.close())

        # nobody listens where it was opened: the attempt dials the relay itself
        async def refused() -> socket.socket:
            raise ConnectionRefusedError("nobody there")

        token = os.urandom(TOKEN_BYTES)
        callee = asyncio.create_task(relay_connect(ip, PORT, token, ROLE_CALLEE, timeout=5))
        a = await call(node, ip, token, timeout=5, connected=refused())
        b = await callee
        await asyncio.gather(a.close(), b.close())


async def test_only_a_fresh_connection_to_the_named_relay_is_handed_out(monkeypatch) -> None:
    async with supernode(relay=BudgetConfig(total_bps=10 * MBIT)) as (_node, ip):
        pre = RelayPreconnect()
        # a relay the candidate policy does not let us dial is skipped for the next ones;
        # two are dialled ahead, not a third
        pre.open([("224.0.0.1", PORT, KEY), (ip, PORT, KEY), (ip, PORT + 1, KEY),
                  (ip, PORT + 2, KEY)], ["127.0.0.1"])
        assert pre.addresses == [(ip, PORT), (ip, PORT + 1)]
        assert pre.take("224.0.0.1", PORT) is None  # not one opened
        second = pre.take(ip, PORT + 1)  # nobody listens there: the attempt dials anew
        assert second is not None
        with pytest.raises(OSError):
            await second
        monkeypatch.setattr(relay_preconnect, "MAX_AGE_S", 0.0)
        opened = pre._opened[(ip, PORT)][0]
        await asyncio.wait([opened])
        assert pre.take(ip, PORT) is None  # too old: closed, not handed out
        await wait_for(lambda: opened.result().fileno() == -1)

        # one nobody took is closed with the path
        monkeypatch.setattr(relay_preconnect, "MAX_AGE_S", 5.0)
        pre = RelayPreconnect()
        pre.open([(ip, PORT, KEY)], ["127.0.0.1"])
        unused = pre._opened[(ip, PORT)][0]
        await asyncio.wait([unused])
        pre.close()
        assert unused.result().fileno() == -1
