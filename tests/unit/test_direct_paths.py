"""The rule that starts the relay at once: no direct path possible between two sides' NAT
classes (:mod:`overlay.media.direct_paths`), against the NAT lab's connectivity matrix."""

from __future__ import annotations

import pytest

from overlay.media.direct_paths import direct_ruled_out, one_network, stagger_overrides
from overlay.media.signalling import Candidates

#: what each lab router kind announces (binding.classify; the supernode's dial-back)
KIND_CANDIDATES = {
    "public": Candidates((("198.18.0.5", 4000),), (("198.18.0.5", 5000),), "public", True),
    "firewalled": Candidates((("198.18.0.11", 4000),), (("198.18.0.11", 5000),), "public",
                             False),
    "cone": Candidates((("198.19.3.2", 4000), ("198.18.1.3", 4000)),
                       (("198.19.3.2", 5000), ("198.18.1.3", 5000)), "cone", False),
    "symmetric": Candidates((("198.19.4.2", 4000), ("198.18.1.4", 4000)),
                            (("198.19.4.2", 5000), ("198.18.1.4", 5001),
                             ("198.18.1.4", 5002)), "symmetric", False),
    "tcp-only": Candidates((("198.19.5.2", 4000), ("198.18.1.5", 4000)), (), "no-udp", False),
}
KINDS = tuple(KIND_CANDIDATES)


def lab_needs_relay(a: str, b: str) -> bool:
    """tests/lab/test_connectivity_lab.EXPECTED: relay when neither side is public and one
    is symmetric or tcp-only."""
    return "public" not in (a, b) and bool({"symmetric", "tcp-only"} & {a, b})


@pytest.mark.parametrize("a", KINDS)
@pytest.mark.parametrize("b", KINDS)
def test_ruled_out_exactly_for_the_relay_pairs_of_the_lab_matrix(a: str, b: str) -> None:
    local, remote = KIND_CANDIDATES[a], KIND_CANDIDATES[b]
    assert direct_ruled_out(local, remote, False) == lab_needs_relay(a, b)
    assert direct_ruled_out(remote, local, False) == lab_needs_relay(a, b)  # both sides agree
    overrides = stagger_overrides(local, remote, False)
    assert (overrides.get("relay") == 0.0) == lab_needs_relay(a, b)


def test_punching_starts_at_once_when_no_tcp_path_can_win() -> None:
    assert stagger_overrides(KIND_CANDIDATES["cone"], KIND_CANDIDATES["firewalled"], False) \
        == {"udp-punch": 0.0}
    assert stagger_overrides(KIND_CANDIDATES["cone"], KIND_CANDIDATES["public"], False) == {}


def test_one_network_or_a_mapping_keeps_the_direct_paths() -> None:
    sym, tcp_only = KIND_CANDIDATES["symmetric"], KIND_CANDIDATES["tcp-only"]
    assert not direct_ruled_out(sym, tcp_only, True)
    mapped = Candidates((*tcp_only.tcp, ("203.0.113.9", 4000)), (), "no-udp", False,
                        mapped_tcp=(("203.0.113.9", 4000),))
    assert not direct_ruled_out(sym, mapped, False)
    # one network: both behind one public address, or the overlay on one machine
    assert one_network(["198.18.1.4"], sym)
    assert one_network(["127.0.0.1"], tcp_only)
    assert not one_network(["198.18.1.9"], sym)
