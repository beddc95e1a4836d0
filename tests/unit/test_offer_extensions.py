"""An offer's 16th field: a map of known keys only (the caller's ``path_salt``, a call's
``bitrate_bps``), in invites only, strict about every value; an invite without it is 14 or
15 fields as before."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest

from overlay.core.identity import Identity
from overlay.core.offers import ANSWER_DOMAIN, INVITE_DOMAIN
from overlay.media.signalling import (
    CALL,
    Candidates,
    Offer,
    SignallingError,
    open_offer,
    sign_offer,
)

ALICE = Identity.generate()


def invite(**extra: Any) -> Offer:
    return Offer("invite", b"\x01" * 16, "alice", "phone", ALICE.public_key, "bob",
                 b"\x02" * 32, Candidates(), time.time(), **extra)


def resigned(fields: list[Any]) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True)
    wire: bytes = msgpack.packb([body, ALICE.sign(INVITE_DOMAIN + body)], use_bin_type=True)
    return wire


def test_the_path_salt_and_bitrate_survive_the_wire() -> None:
    sent = sign_offer(invite(purpose=CALL, path_salt=b"\x05" * 16, bitrate_bps=64_000), ALICE)
    got = open_offer(sent.wire)
    assert (got.path_salt, got.bitrate_bps) == (b"\x05" * 16, 64_000)
    assert len(got.fields()) == 16 and got.fields()[14] is None  # no vouchers: nil
    assert len(sign_offer(invite(), ALICE).fields()) == 14  # none set: as before


@pytest.mark.parametrize("extensions", [
    {},  # empty: no extensions is 14 or 15 fields
    {"path_salt": b"\x05" * 16, "colour": "blue"},  # an unknown key
    {"path_salt": b"\x05" * 15},
    {"path_salt": "x" * 16},
    {"bitrate_bps": 64_000},  # a file's invite
    [b"\x05" * 16],
])
def test_a_bad_extensions_field_is_refused(extensions: Any) -> None:
    fields = sign_offer(invite(path_salt=b"\x05" * 16), ALICE).fields()
    with pytest.raises(SignallingError):
        open_offer(resigned([*fields[:15], extensions]))


@pytest.mark.parametrize("bitrate", [7_999, 256_001, True, 64_000.0])
def test_a_call_bitrate_out_of_bounds_is_refused(bitrate: Any) -> None:
    fields = sign_offer(invite(purpose=CALL, bitrate_bps=64_000), ALICE).fields()
    with pytest.raises(SignallingError):
        open_offer(resigned([*fields[:15], {"bitrate_bps": bitrate}]))


def test_fifteen_fields_with_no_vouchers_and_extensions_in_answers_are_refused() -> None:
    fields = sign_offer(invite(path_salt=b"\x05" * 16), ALICE).fields()
    with pytest.raises(SignallingError):
        open_offer(resigned(fields[:15]))  # nil where the vouchers go, nothing after
    answer = ["answer", *fields[1:]]
    body = msgpack.packb(answer, use_bin_type=True)
    wire = msgpack.packb([body, ALICE.sign(ANSWER_DOMAIN + body)], use_bin_type=True)
    with pytest.raises(SignallingError, match="extensions"):
        open_offer(wire)
