"""A supernode's datagram relay (``SupernodeOptions.relay_udp_port``), end to end on loopback:
a call relayed through it, its ``/metrics`` counters, and the TCP relay's limits shared with
it (issue 15)."""

from __future__ import annotations

import asyncio
import os
import time

from overlay.call.frames import new_call_id
from overlay.call.session import CallSession, relay_rate_bps
from overlay.call.udp_io import RelayRefused, bind_relay, open_call_socket, run_call
from overlay.core import records
from overlay.core.identity import Identity
from overlay.node.daemon import NodeOptions
from overlay.node.supernode import Supernode, SupernodeOptions
from overlay.relay.budget import BudgetConfig
from overlay.relay.protocol import encode_hello
from overlay.relay.voucher import Voucher, statement_for
from tests.helpers.netutil import loopback_ips, wait_for


def _voucher(relay_key: bytes, token: bytes, a: Identity, b: Identity) -> bytes:
    st = statement_for(relay_key, token, int(time.time()) + 300, a.public_key, b.public_key)
    return Voucher(st, st.sign(a), st.sign(b)).to_bytes()


def _metric(node: Supernode, name: str, reason: str | None = None) -> float:
    collect = node.extra_metrics()
    assert collect is not None
    return sum(s.value for family in collect() for s in family.samples
               if s.name == name and (reason is None or s.labels.get("reason") == reason))


async def test_call_relayed_by_a_supernode_shows_in_its_metrics() -> None:
    ip, ip_a, ip_b = loopback_ips(3)
    node = Supernode(NodeOptions(listen=(ip, 4311)),
                     SupernodeOptions(relay=BudgetConfig(total_bps=2_000_000,
                                                         max_sessions_per_key=1),
                                      relay_udp_port=0))
    await node.start()
    sa, sb = await open_call_socket(ip_a), await open_call_socket(ip_b)
    try:
        relay = node.relay_udp_address
        key = node.identity.public_key
        # its signed record advertises the datagram relay's port
        assert node.record is not None
        assert records.verify(node.record.wire).record.relay_udp_port == relay[1]
        alice, bob = Identity.generate(), Identity.generate()
        token = os.urandom(32)
        rate = relay_rate_bps(24_000)
        caller = asyncio.ensure_future(
            bind_relay(sa, relay, encode_hello(0, token, rate, _voucher(key, token, alice, bob))))
        await wait_for(lambda: token in node.datagram_relay.sessions)  # callee after caller
        await bind_relay(sb, relay, encode_hello(1, token, rate))
        await caller
        assert node.relay.budget.reserved_bps == rate  # one budget for both relays

        # the same key pair's next session, on the TCP relay's limit of 1 per key: refused
        token2 = os.urandom(32)
        sc = await open_call_socket(ip_a)
        try:
            await bind_relay(sc, relay, encode_hello(0, token2, rate,
                                                     _voucher(key, token2, alice, bob)))
        except RelayRefused as exc:
            assert exc.reason == "key limit"
        else:
            raise AssertionError("a second session for one key past its limit")
        finally:
            sc.close()

        secret, call_id = os.urandom(32), new_call_id()
        now = time.monotonic()
        a = CallSession(secret, call_id, caller=True, now=now, path="relay-udp")
        b = CallSession(secret, call_id, caller=False, now=now, path="relay-udp")
        fa, fb = await asyncio.gather(run_call(a, sa, lambda: relay, 3.0),
                                      run_call(b, sb, lambda: relay, 3.0))
    finally:
        sa.close()
        sb.close()
        await node.stop()
    # no datagram is lost through the relay; the supernode and both ends share one event loop
    # here, so its stalls make a few frames late (the MOS bar for an unloaded call is in
    # test_call_loopback.py)
    assert fa.loss_pct == 0.0 and fb.loss_pct == 0.0, (fa, fb)
    assert min(fa.mos, fb.mos) >= 4.0, (fa, fb)
    assert _metric(node, "overlay_relay_calls_total") == 1
    forwarded = _metric(node, "overlay_relay_datagrams_total")
    assert forwarded >= fa.frames_received + fb.frames_received
    assert _metric(node, "overlay_relay_datagram_bytes_total") == forwarded * 100
    assert _metric(node, "overlay_relay_call_refused_total", "key limit") == 1
    assert _metric(node, "overlay_relay_forwarded_bytes_total") >= forwarded * 100
