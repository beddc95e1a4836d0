"""The DHT method ``signal`` between supernodes: its argument list, parsed once."""

from __future__ import annotations

import msgpack
import pytest

from overlay.core.strict_msgpack import unpack_strict
from overlay.node.errors import BadSignal, NodeError
from overlay.node.signal_forwarding import ForwardedSignal

KEY = bytes(range(32))
WIRE: list[object] = ["alice", "laptop", KEY, "bob", "phone", b"\x01payload"]


def test_the_argument_list_round_trips_in_wire_order() -> None:
    signal = ForwardedSignal.from_args(list(WIRE))
    assert signal == ForwardedSignal("alice", "laptop", KEY, "bob", "phone", b"\x01payload")
    assert signal.to_args() == WIRE
    wire = msgpack.packb(signal.to_args(), use_bin_type=True)
    assert wire == msgpack.packb(WIRE, use_bin_type=True)
    assert ForwardedSignal.from_args(unpack_strict(wire, max_len=4096)) == signal
    delivery = signal.delivery()
    assert (delivery.from_user, delivery.from_device, delivery.from_key, delivery.payload) == (
        "alice", "laptop", KEY, b"\x01payload")


@pytest.mark.parametrize("args", [
    WIRE[:5],
    [*WIRE, b""],
    ["alice", "laptop", KEY, "bob", 7, b""],
    ["alice", "laptop", "key", "bob", "phone", b""],
    ["alice", "laptop", KEY, "bob", "phone", bytearray(b"")],
    [b"alice", "laptop", KEY, "bob", "phone", b""],
])
def test_a_list_off_the_schema_is_refused(args: list[object]) -> None:
    with pytest.raises(BadSignal, match=r"^signal takes from_user, from_device, from_key, "
                                        r"to_user, to_device, payload$"):
        ForwardedSignal.from_args(args)


@pytest.mark.parametrize("args", [
    ["Alice!", "laptop", KEY, "bob", "phone", b""],
    ["alice", "laptop", KEY[:31], "bob", "phone", b""],
])
def test_a_signal_the_receiver_could_not_be_given_is_refused(args: list[object]) -> None:
    with pytest.raises(BadSignal, match=r"^bad signal: ") as exc:
        ForwardedSignal.from_args(args)
    # the DHT answers ValueError/TypeError with {"error": ...}
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, NodeError)
