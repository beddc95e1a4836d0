"""A send does not wait for the UDP binding while an older answer is at hand, also one from
other supernodes (:func:`overlay.media.transport_hooks.udp_candidates`): the old answer is
used, a new one is asked for in the background. Real UDP sockets; the "supernodes" are
silent sockets."""

from __future__ import annotations

import asyncio
import socket
import time

from overlay.core.identity import Identity
from overlay.media import transport_hooks
from overlay.media.transport_hooks import BINDING_TIMEOUT_S, NAT_CACHE_S, NAT_STALE_S
from tests.helpers.netutil import wait_for


async def test_a_stale_answer_is_used_at_once_and_refreshed_behind() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never answers a binding
    silent.bind(("127.0.0.1", 0))
    supernodes = [(silent.getsockname(), b"\x01" * 32)]
    udp = await transport_hooks.open_udp()
    try:
        udp.nat, udp.mapped = "cone", (("198.18.1.3", 40000),)
        udp.checked_with = (silent.getsockname(),)
        udp.checked_at = time.monotonic() - NAT_CACHE_S - 1  # stale, not too old
        started = time.monotonic()
        cands, nat = await transport_hooks.udp_candidates(
            udp, Identity.generate(), "127.0.0.1", supernodes)
        assert time.monotonic() - started < BINDING_TIMEOUT_S / 3
        assert nat == "cone" and ("198.18.1.3", 40000) in cands
        assert udp.refreshing is not None
        # the refresh asks the silent supernode, times out and records what it found
        refresh = udp.refreshing
        await asyncio.wait([refresh], timeout=BINDING_TIMEOUT_S + 5)
        await asyncio.sleep(0)  # its done callback runs next
        assert refresh.done() and udp.refreshing is None and udp.nat == "no-udp"

        # too old: the send waits for a fresh answer
        udp.checked_at = time.monotonic() - NAT_STALE_S - 1
        started = time.monotonic()
        _, nat = await transport_hooks.udp_candidates(
            udp, Identity.generate(), "127.0.0.1", supernodes)
        assert time.monotonic() - started >= BINDING_TIMEOUT_S * 0.9 and nat == "no-udp"
    finally:
        await transport_hooks.close_udp(udp)
        silent.close()


async def test_other_supernodes_refresh_behind_unless_only_one_answered_before() -> None:
    """A TCP-only client's first send after its attach-time binding (nobody answered) does not
    wait for the binding again when its backup supernode came up meanwhile; an ``unknown``
    answer (one supernode) is asked again of two, and that is waited for."""
    silent = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in silent:
        s.bind(("127.0.0.1", 0))
    one = [(silent[0].getsockname(), b"\x01" * 32)]
    two = [*one, (silent[1].getsockname(), b"\x02" * 32)]
    udp = await transport_hooks.open_udp()
    try:
        udp.nat, udp.mapped = "no-udp", ()
        udp.checked_with, udp.checked_at = (one[0][0],), time.monotonic()
        started = time.monotonic()
        _, nat = await transport_hooks.udp_candidates(udp, Identity.generate(), "127.0.0.1",
                                                      two)
        assert time.monotonic() - started < BINDING_TIMEOUT_S / 3 and nat == "no-udp"
        assert udp.refreshing is not None
        udp.refreshing.cancel()
        udp.refreshing = None

        udp.nat, udp.mapped = "unknown", (("198.18.1.3", 40000),)
        started = time.monotonic()
        _, nat = await transport_hooks.udp_candidates(udp, Identity.generate(), "127.0.0.1",
                                                      two)
        assert time.monotonic() - started >= BINDING_TIMEOUT_S * 0.9 and nat == "no-udp"
    finally:
        await transport_hooks.close_udp(udp)
        for s in silent:
            s.close()


async def test_a_send_joins_the_check_under_way_instead_of_starting_another() -> None:
    """The client asks at attach; a send right after (the check still under way: nobody
    answers on a TCP-only network) waits only for what is left of that check."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    supernodes = [(silent.getsockname(), b"\x01" * 32)]
    udp = await transport_hooks.open_udp()
    try:
        at_attach = asyncio.ensure_future(transport_hooks.udp_candidates(
            udp, Identity.generate(), "127.0.0.1", supernodes))
        await wait_for(lambda: udp.refreshing is not None, timeout=5, interval=0.01)
        first = udp.refreshing
        assert first is not None
        # 60 % of the attach-time check's window goes by (nobody answers it)
        await asyncio.wait([first], timeout=BINDING_TIMEOUT_S * 0.6)
        assert not first.done()
        started = time.monotonic()
        _, nat = await transport_hooks.udp_candidates(udp, Identity.generate(), "127.0.0.1",
                                                      supernodes)
        assert nat == "no-udp" and time.monotonic() - started < BINDING_TIMEOUT_S * 0.6
        assert (await at_attach)[1] == "no-udp" and udp.refreshing is None
    finally:
        await transport_hooks.close_udp(udp)
        silent.close()
