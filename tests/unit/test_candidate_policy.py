"""The candidate policy (sans-IO): which peer-named addresses a client dials."""

from __future__ import annotations

import pytest

from overlay.media.candidate_policy import (
    decide,
    ip_literal,
    on_shared_lan,
    public_of,
    scope,
    select,
)

PUBLIC_ME = ("203.0.113.7",)
LOCAL_ME = ("127.0.0.1",)


@pytest.mark.parametrize(("host", "expected"), [
    ("8.8.8.8", "public"),
    ("198.18.0.12", "public"),        # the lab's public range: Python calls it private
    ("198.19.3.2", "public"),
    ("2001:db8::1", "public"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.10", "private"),
    ("100.64.0.1", "private"),        # carrier-grade NAT
    ("fd12:3456::1", "private"),
    ("127.0.0.1", "loopback"),
    ("127.45.6.7", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped is judged as the IPv4 address
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.1.2.3", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("255.255.255.255", "reserved"),
    ("240.0.0.1", "reserved"),
    ("localhost", "not an IP literal"),
    ("example.org", "not an IP literal"),
    ("fe80::1%eth0", "not an IP literal"),
    ("", "not an IP literal"),
])
def test_scope(host: str, expected: str) -> None:
    assert scope(host) == expected


def test_ip_literal_is_strict() -> None:
    assert ip_literal("1.2.3.4") is not None
    for bad in ("1.2.3", "01.2.3.4", "1.2.3.4 ", "[::1]", "0x7f.0.0.1", "2130706433"):
        assert ip_literal(bad) is None, bad


def test_public_addresses_are_dialled() -> None:
    assert decide("198.51.100.9", PUBLIC_ME, ()).dial
    assert decide("198.51.100.9", (), ()).dial  # not attached yet: public still fine


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_only_when_the_overlay_runs_on_this_machine(host: str) -> None:
    refused = decide(host, PUBLIC_ME, ("127.0.0.1",))
    assert not refused.dial and "loopback" in refused.reason
    assert not decide(host, (), ()).dial
    assert decide(host, LOCAL_ME, ()).dial
    assert decide(host, ("127.44.5.6",), ()).dial


@pytest.mark.parametrize("host", ["169.254.0.5", "fe80::2", "224.0.0.251", "ff02::fb",
                                  "0.0.0.0", "::", "255.255.255.255", "localhost"])
def test_never_dialled_whoever_asks(host: str) -> None:
    for own in (PUBLIC_ME, LOCAL_ME, ()):
        assert not decide(host, own, PUBLIC_ME).dial


@pytest.mark.parametrize("host", ["10.0.0.5", "192.168.1.2", "100.64.3.4", "fd00::5"])
def test_private_only_behind_the_same_public_address(host: str) -> None:
    assert decide(host, PUBLIC_ME, PUBLIC_ME).dial                  # one LAN
    assert decide(host, PUBLIC_ME, ("::ffff:203.0.113.7",)).dial    # same, mapped
    assert not decide(host, PUBLIC_ME, ("203.0.113.8",)).dial       # another NAT
    assert not decide(host, PUBLIC_ME, ()).dial
    assert not decide(host, (), PUBLIC_ME).dial                     # our address unknown
    # a peer claiming a private "public" address does not make a LAN
    assert not decide(host, ("10.9.9.9",), ("10.9.9.9",)).dial
    assert decide(host, LOCAL_ME, ()).dial                          # all on this machine


def test_select_and_public_of() -> None:
    peer = public_of(["203.0.113.7", "10.0.0.2", "127.0.0.1", "::ffff:203.0.113.7"])
    assert peer == frozenset({"203.0.113.7"})
    kept, dropped = select([("203.0.113.7", 1), ("10.0.0.2", 2), ("127.0.0.1", 3),
                            ("169.254.1.1", 4)], PUBLIC_ME, peer)
    assert kept == (("203.0.113.7", 1), ("10.0.0.2", 2))
    assert [a for a, _ in dropped] == [("127.0.0.1", 3), ("169.254.1.1", 4)]


def test_on_shared_lan_names_the_peers_lan_addresses_only() -> None:
    # the peer behind our public address: its other addresses are on our LAN
    assert on_shared_lan("192.168.1.3", PUBLIC_ME, PUBLIC_ME)
    assert on_shared_lan("198.19.4.3", PUBLIC_ME, ("::ffff:203.0.113.7",))  # lab LAN: "public"
    assert not on_shared_lan("203.0.113.7", PUBLIC_ME, PUBLIC_ME)  # our public one: hairpin
    assert not on_shared_lan("::ffff:203.0.113.7", PUBLIC_ME, PUBLIC_ME)
    # another NAT, our address unknown, or everything on this machine: no LAN
    assert not on_shared_lan("192.168.1.3", PUBLIC_ME, ("203.0.113.8",))
    assert not on_shared_lan("192.168.1.3", (), PUBLIC_ME)
    assert not on_shared_lan("127.0.0.1", LOCAL_ME, LOCAL_ME)
    assert not on_shared_lan("127.0.0.1", PUBLIC_ME, PUBLIC_ME)
    assert not on_shared_lan("169.254.1.1", PUBLIC_ME, PUBLIC_ME)
