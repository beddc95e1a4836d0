"""Relays against someone who wants them for free (issue 12, "anonymous relaying").

A real supernode on loopback with the relay budget `overlay supernode` starts with (2 Mbit/s);
the attacker has raw TCP sockets, as many loopback addresses and throwaway ed25519 keys as it
likes, and the relay wire format of docs/ARCHITECTURE.md ("Relay"). Everything here is built
from bytes, as an attacker would: hello v1 (token only) and hello v2 with a voucher.

1. Anonymous self-paired hellos (the reported flaw: two of them took a default relay and the
   honest caller got ``budget``) and token-only hellos are refused ``unreserved``; the honest
   pair still gets a session.
2. Forged, expired, too-long, other-relay, other-token and one-key vouchers are refused with
   their reason and reserve nothing.
3. From one /24, sessions stop at the per-/24 limits (``subnet limit``) while another /24 still
   gets one; one key pair stops at the per-key limit (``key limit``) even from many /24s.
4. A session announces its limits in its OK status and is cut at them (bytes, seconds).
5. A callee's hello needs no credential, and the relay holds a callee whose caller has not
   come yet: callees with tokens nobody brings are held at most 8 per IP and 16 per /24, the
   rest refused ``unknown token`` at once, the held ones let go when their hold ends; an
   honest callee elsewhere is still held and paired.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from overlay.core.identity import Identity
from overlay.node.daemon import NodeOptions
from overlay.node.supernode import Supernode, SupernodeOptions
from overlay.relay.budget import BudgetConfig
from tests.helpers.netutil import loopback_ips, subnet_ips, wait_for

MBIT = 1_000_000
#: `overlay supernode`'s default --relay-budget
CLI_DEFAULT_BUDGET = 2 * MBIT
VOUCHER_DOMAIN = b"overlay/relay-voucher/v1\x00"
#: what the documentation promises a session may use at most, by default
DOCUMENTED_MAX_BYTES = 64 * 2**20
DOCUMENTED_MAX_S = 3600


# -- the wire, from docs/ARCHITECTURE.md ----------------------------------------------------


def hello_v1(role: int, token: bytes, rate: int = 0) -> bytes:
    return b"OVRL" + struct.pack(">BB32sQ", 1, role, token, rate)


def hello_v2(role: int, token: bytes, voucher: bytes | None = None, rate: int = 0) -> bytes:
    head = b"OVRL" + struct.pack(">BB32sQ", 2, role, token, rate)
    return head + (b"\x00" if voucher is None else b"\x01" + voucher)


def token_hash(token: bytes) -> bytes:
    return hashlib.blake2b(token, digest_size=32, person=b"ovl-relay-token").digest()


def voucher(relay_key: bytes, token: bytes, caller: Identity, callee: Identity,
            expires_at: int | None = None, *, caller_signs: Identity | None = None,
            callee_signs: Identity | None = None) -> bytes:
    expires = int(time.time()) + 300 if expires_at is None else expires_at
    statement = (relay_key + token_hash(token) + struct.pack(">Q", expires)
                 + caller.public_key + callee.public_key)
    return (statement + (caller_signs or caller).sign(VOUCHER_DOMAIN + statement)
            + (callee_signs or callee).sign(VOUCHER_DOMAIN + statement))


async def read_status(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body): 0 OK (body: the session's limits), 1 REFUSED (body: the reason)."""
    async with asyncio.timeout(timeout):
        head = await reader.readexactly(2)
        return head[0], await reader.readexactly(head[1])


def limits_of(body: bytes) -> tuple[int, int, int]:
    """An OK status body: max_bytes(8) | max_seconds(4) | rate_bps(8)."""
    assert len(body) == 20, f"an OK status carries the session's limits, got {body!r}"
    max_bytes, max_s, rate = struct.unpack(">QIQ", body)
    return max_bytes, max_s, rate


def refused_metric(node: Supernode, reason: str) -> float:
    collect = node.extra_metrics()
    assert collect is not None
    return sum(sample.value for family in collect() for sample in family.samples
               if sample.name == "overlay_relay_refused_total"
               and sample.labels.get("reason") == reason)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, relay: tuple[str, int], source_ip: str, first: bytes) -> Conn:
        reader, writer = await asyncio.open_connection(*relay, local_addr=(source_ip, 0))
        writer.write(first)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def relay_node(**budget: Any) -> AsyncIterator[tuple[Supernode, tuple[str, int]]]:
    (ip,) = loopback_ips(1)
    node = Supernode(NodeOptions(listen=(ip, 4310)),
                     SupernodeOptions(relay=BudgetConfig(**budget)))
    await node.start()
    try:
        yield node, (ip, 4310)
    finally:
        await node.stop()


async def session(relay: tuple[str, int], key: bytes, caller_ip: str, callee_ip: str,
                  caller: Identity | None = None, callee: Identity | None = None,
                  ) -> tuple[int, bytes, list[Conn]]:
    """A self-paired session with a valid voucher: caller hello, then callee hello; the
    caller's status. (Both ends are the attacker's.)"""
    token = os.urandom(32)
    v = voucher(key, token, caller or Identity.generate(), callee or Identity.generate())
    a = await Conn.open(relay, caller_ip, hello_v2(0, token, v))
    b = await Conn.open(relay, callee_ip, hello_v2(1, token))
    status, body = await read_status(a.reader)
    return status, body, [a, b]


# -- 1 --------------------------------------------------------------------------------------


async def test_anonymous_and_token_only_hellos_are_refused_and_the_honest_pair_gets_through():
    async with relay_node(total_bps=CLI_DEFAULT_BUDGET) as (node, relay):
        attacker = loopback_ips(2)
        conns: list[Conn] = []
        for _ in range(2):  # the reported attack: two self-paired anonymous sessions
            token = os.urandom(32)
            a = await Conn.open(relay, attacker[0], hello_v1(0, token))
            b = await Conn.open(relay, attacker[1], hello_v1(1, token))
            conns += [a, b]
            assert await read_status(a.reader) == (1, b"unreserved")
        token = os.urandom(32)  # the same in version 2, with no credential
        a = await Conn.open(relay, attacker[0], hello_v2(0, token))
        conns.append(a)
        assert await read_status(a.reader) == (1, b"unreserved")
        assert node.relay.budget.reserved_bps == 0 and not node.relay.active

        honest = loopback_ips(2)
        status, body, pair = await session(relay, node.identity.public_key, *honest)
        assert status == 0, body
        assert node.relay.stats.refused["unreserved"] == 3
        assert refused_metric(node, "unreserved") == 3  # what the operator sees in /metrics
        for c in conns + pair:
            c.close()


# -- 2 --------------------------------------------------------------------------------------


async def test_forged_expired_and_misdirected_vouchers_are_refused():
    async with relay_node(total_bps=CLI_DEFAULT_BUDGET) as (node, relay):
        key = node.identity.public_key
        alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
        now = int(time.time())
        token = os.urandom(32)
        cases = {
            "forged caller signature": (voucher(key, token, alice, bob, caller_signs=mallory),
                                        "bad voucher"),
            "forged callee signature": (voucher(key, token, alice, bob, callee_signs=mallory),
                                        "bad voucher"),
            "expired": (voucher(key, token, alice, bob, now - 5), "voucher expired"),
            "a day long": (voucher(key, token, alice, bob, now + 86_400), "bad voucher"),
            "for another relay": (voucher(Identity.generate().public_key, token, alice, bob),
                                  "bad voucher"),
            "for another token": (voucher(key, os.urandom(32), alice, bob), "bad voucher"),
            "one key twice": (voucher(key, token, alice, alice), "bad voucher"),
            "truncated": (voucher(key, token, alice, bob)[:-1], "bad hello"),
        }
        (ip,) = loopback_ips(1)
        for name, (v, reason) in cases.items():
            c = await Conn.open(relay, ip, hello_v2(0, token, v))
            got = await read_status(c.reader) if reason != "bad hello" else None
            if reason == "bad hello":  # one byte short: the relay waits, then gives up
                c.writer.write_eof()
                with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                    got = await read_status(c.reader, timeout=15)
                assert got in (None, (1, b"bad hello")), name
            else:
                assert got == (1, reason.encode()), name
            c.close()
        assert node.relay.budget.reserved_bps == 0 and not node.relay.waiting
        # the token was never admitted: the genuine voucher still opens it
        c = await Conn.open(relay, ip, hello_v2(0, token, voucher(key, token, alice, bob)))
        await wait_for(lambda: len(node.relay.waiting) == 1)
        c.close()


# -- 3 --------------------------------------------------------------------------------------


async def test_one_slash24_cannot_take_the_default_relay():
    async with relay_node(total_bps=CLI_DEFAULT_BUDGET) as (node, relay):
        key = node.identity.public_key
        one_net = subnet_ips(20)  # one /24, fresh keys for every session
        assert len({ip.rsplit(".", 1)[0] for ip in one_net}) == 1
        statuses, conns = [], []
        for i in range(0, 20, 2):
            status, body, pair = await session(relay, key, one_net[i], one_net[i + 1])
            statuses.append(body.decode() if status else "ok")
            conns += pair
        assert statuses[0] == "ok"
        assert set(statuses[1:]) == {"subnet limit"}, statuses
        other = [ip for ip in loopback_ips(3) if ip.rsplit(".", 1)[0]
                 != one_net[0].rsplit(".", 1)[0]][:2]
        status, body, pair = await session(relay, key, *other)
        assert status == 0, body  # the honest caller elsewhere is not starved
        for c in conns + pair:
            c.close()


async def test_sessions_per_slash24_and_per_key_are_capped_on_a_large_relay():
    async with relay_node(total_bps=1000 * MBIT, session_cap_bps=MBIT,
                          max_sessions=256) as (node, relay):
        key = node.identity.public_key
        one_net = subnet_ips(40)
        statuses, conns = [], []
        for i in range(0, 40, 2):
            status, body, pair = await session(relay, key, one_net[i], one_net[i + 1])
            statuses.append(body.decode() if status else "ok")
            conns += pair
        assert 1 <= statuses.count("ok") <= 8 and statuses[-1] == "subnet limit", statuses
        # one key pair from many /24s
        caller, callee = Identity.generate(), Identity.generate()
        nets = loopback_ips(12)  # one address in each of 12 /24s
        assert len({ip.rsplit(".", 1)[0] for ip in nets}) == 12
        statuses = []
        for i in range(0, 12, 2):
            status, body, pair = await session(relay, key, nets[i], nets[i + 1], caller, callee)
            statuses.append(body.decode() if status else "ok")
            conns += pair
        assert 1 <= statuses.count("ok") <= 4 and statuses[-1] == "key limit", statuses
        for c in conns:
            c.close()


# -- 4 --------------------------------------------------------------------------------------


async def drain(reader: asyncio.StreamReader, timeout: float) -> int:
    got = 0
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            while data := await reader.read(1 << 20):
                got += len(data)
    return got


async def test_a_session_announces_its_limits_and_is_cut_at_them():
    async with relay_node(total_bps=800 * MBIT, session_cap_bps=400 * MBIT) as (node, relay):
        ips = loopback_ips(2)
        status, body, (a, b) = await session(relay, node.identity.public_key, *ips)
        assert status == 0
        max_bytes, max_s, _ = limits_of(body)
        assert max_bytes <= DOCUMENTED_MAX_BYTES and max_s <= DOCUMENTED_MAX_S
        assert limits_of((await read_status(b.reader))[1])[:2] == (max_bytes, max_s)
        chunk = os.urandom(1 << 20)

        async def flood() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    a.writer.write(chunk)
                    await a.writer.drain()

        sender = asyncio.create_task(flood())
        received = await drain(b.reader, 60)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        assert received == max_bytes  # cut exactly where it said
        await wait_for(lambda: node.relay.stats.ended["byte limit"] == 1)
        a.close(), b.close()

    async with relay_node(total_bps=10 * MBIT, max_session_s=1.0) as (node, relay):
        ips = loopback_ips(2)
        status, body, (a, b) = await session(relay, node.identity.public_key, *ips)
        assert status == 0 and limits_of(body)[1] == 1
        assert (await read_status(b.reader))[0] == 0
        started = time.monotonic()
        a.writer.write(b"x" * 100)
        assert await drain(b.reader, 10) == 100
        assert time.monotonic() - started < 5
        await wait_for(lambda: node.relay.stats.ended["duration limit"] == 1)
        a.close(), b.close()



# -- 5 --------------------------------------------------------------------------------------


async def status_within(conn: Conn, timeout: float) -> tuple[int, bytes] | None:
    """The relay's answer on ``conn`` if it comes within ``timeout``, else None (held)."""
    try:
        return await read_status(conn.reader, timeout)
    except TimeoutError:
        return None


async def test_callees_held_before_their_caller_are_capped_per_ip_and_per_slash24():
    async with relay_node(total_bps=CLI_DEFAULT_BUDGET) as (node, relay):
        node.relay.early_callee_hold_s = 3.0
        one_net = subnet_ips(4)  # the attacker's /24
        junk: dict[str, list[Conn]] = {ip: [] for ip in one_net}
        for ip in one_net:
            for _ in range(12):
                junk[ip].append(await Conn.open(relay, ip, hello_v2(1, os.urandom(32))))
        answers = {ip: await asyncio.gather(*(status_within(c, 1.0) for c in conns))
                   for ip, conns in junk.items()}
        held = {ip: sum(a is None for a in got) for ip, got in answers.items()}
        refused = {ip: [a for a in got if a is not None] for ip, got in answers.items()}
        assert all(n <= 8 for n in held.values()), held  # per IP
        assert sum(held.values()) == 16, held  # per /24
        assert all(a == (1, b"unknown token") for got in refused.values() for a in got)
        assert len(node.relay.early) == 16

        # an honest pair from elsewhere: its callee comes first, is held, and pairs at once
        honest_callee, honest_caller = loopback_ips(2)
        token = os.urandom(32)
        b = await Conn.open(relay, honest_callee, hello_v2(1, token))
        await wait_for(lambda: len(node.relay.early) == 17)
        v = voucher(node.identity.public_key, token, Identity.generate(), Identity.generate())
        a = await Conn.open(relay, honest_caller, hello_v2(0, token, v))
        assert (await read_status(a.reader))[0] == 0
        assert (await read_status(b.reader))[0] == 0
        a.writer.write(b"through")
        assert await b.reader.readexactly(7) == b"through"

        # the hold ends: every junk callee still held is let go with "unknown token"
        still = [c for ip, conns in junk.items()
                 for c, got in zip(conns, answers[ip], strict=True) if got is None]
        assert len(still) == 16
        assert await asyncio.gather(*(status_within(c, 5.0) for c in still)) \
            == [(1, b"unknown token")] * 16
        await wait_for(lambda: len(node.relay.early) == 0)
        assert node.relay.budget.reserved_bps > 0 and len(node.relay.active) == 1
        for c in [*(c for conns in junk.values() for c in conns), a, b]:
            c.close()
