"""The benchmark's TURN wire (tools/bench/turn_wire.py) against the RFC 5769 test vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.bench import turn_wire as tw

# RFC 5769 2.4: request with long-term authentication (USERNAME, NONCE, REALM, MESSAGE-INTEGRITY)
LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b393534643"
    "64f4c33346f4c3946535476793634734100140"
    "00b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666")
BINDING = 0x001
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LT_PASSWORD = "TheMatrIX"  # "The\u00adM\u00aatr\u2168" after SASLprep
LT_NONCE, LT_REALM = b"f//499k954d6OL34oL9FSTvy64sA", b"example.org"

# RFC 5769 2.2: IPv4 response, short-term credential (the password is the key),
# XOR-MAPPED-ADDRESS 192.0.2.1:32853, FINGERPRINT
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "00200008 0001a147e112a643".replace(" ", "")
    + "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96")


def test_long_term_request_encodes_to_the_rfc_5769_bytes() -> None:
    key = tw.long_term_key(LT_USERNAME, LT_REALM.decode(), LT_PASSWORD)
    msg = tw.encode_message(
        BINDING, tw.REQUEST, LONG_TERM_REQUEST[8:20],
        [(tw.USERNAME, LT_USERNAME.encode()), (tw.NONCE, LT_NONCE), (tw.REALM, LT_REALM)],
        key=key)
    assert msg == LONG_TERM_REQUEST


def test_long_term_request_integrity_checks_and_fails_with_another_password() -> None:
    msg = tw.decode_message(LONG_TERM_REQUEST)
    assert (msg.method, msg.cls) == (BINDING, tw.REQUEST)
    assert msg.get(tw.USERNAME) == LT_USERNAME.encode()
    assert msg.get(tw.NONCE) == LT_NONCE and msg.get(tw.REALM) == LT_REALM
    assert tw.integrity_ok(msg, tw.long_term_key(LT_USERNAME, "example.org", LT_PASSWORD))
    assert not tw.integrity_ok(msg, tw.long_term_key(LT_USERNAME, "example.org", "TheMatrix"))
    tampered = bytearray(LONG_TERM_REQUEST)
    tampered[30] ^= 1  # a bit of the username, covered by the HMAC
    assert not tw.integrity_ok(tw.decode_message(bytes(tampered)),
                               tw.long_term_key(LT_USERNAME, "example.org", LT_PASSWORD))


def test_ipv4_response_xor_mapped_address_integrity_and_fingerprint() -> None:
    msg = tw.decode_message(IPV4_RESPONSE)
    assert (msg.method, msg.cls) == (BINDING, tw.SUCCESS)
    value = msg.get(tw.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert tw.decode_xor_address(value) == ("192.0.2.1", 32853)
    assert tw.encode_xor_address(("192.0.2.1", 32853)) == value
    # the HMAC ends before FINGERPRINT, whose 8 bytes the length field must not count
    assert tw.integrity_ok(msg, SHORT_TERM_PASSWORD)
    assert not tw.integrity_ok(msg, SHORT_TERM_PASSWORD[:-1])
    assert tw.fingerprint_ok(msg)
    broken = bytearray(IPV4_RESPONSE)
    broken[-1] ^= 0xFF
    assert not tw.fingerprint_ok(tw.decode_message(bytes(broken)))


def test_encoded_integrity_and_fingerprint_verify() -> None:
    """What we encode with MESSAGE-INTEGRITY and FINGERPRINT decodes and verifies; a changed
    address byte fails both."""
    ours = tw.encode_message(tw.ALLOCATE, tw.SUCCESS, bytes(range(12)),
                             [(tw.XOR_RELAYED_ADDRESS, tw.encode_xor_address(("127.0.0.1", 5)))],
                             key=SHORT_TERM_PASSWORD, fingerprint=True)
    msg = tw.decode_message(ours)
    assert tw.integrity_ok(msg, SHORT_TERM_PASSWORD) and tw.fingerprint_ok(msg)
    assert tw.decode_xor_address(msg.get(tw.XOR_RELAYED_ADDRESS) or b"") == ("127.0.0.1", 5)
    changed = bytearray(ours)
    changed[27] ^= 1
    bad = tw.decode_message(bytes(changed))
    assert not tw.integrity_ok(bad, SHORT_TERM_PASSWORD) and not tw.fingerprint_ok(bad)


@pytest.mark.parametrize(("method", "cls", "value"), [
    (tw.ALLOCATE, tw.REQUEST, 0x0003), (tw.ALLOCATE, tw.SUCCESS, 0x0103),
    (tw.ALLOCATE, tw.ERROR, 0x0113), (tw.CHANNEL_BIND, tw.SUCCESS, 0x0109),
    (tw.REFRESH, tw.REQUEST, 0x0004), (0x007, tw.INDICATION, 0x0017)])
def test_message_types(method: int, cls: int, value: int) -> None:
    assert tw.message_type(method, cls) == value
    assert tw.split_type(value) == (method, cls)


def test_channel_data_and_error_code() -> None:
    assert tw.channel_data(0x4001, b"abc") == b"\x40\x01\x00\x03abc"
    assert tw.decode_channel_data(b"\x40\x01\x00\x03abcd") == (0x4001, b"abc")
    with pytest.raises(tw.TurnWireError):
        tw.decode_channel_data(b"\x40\x01\x00\x09abc")
    with pytest.raises(tw.TurnWireError):
        tw.decode_channel_data(b"\x00\x01\x00\x00")
    assert tw.decode_error_code(b"\x00\x00\x04\x01Unauthorized") == (401, "Unauthorized")


def test_truncated_and_oversized_messages_are_refused() -> None:
    for bad in (LONG_TERM_REQUEST[:-1], LONG_TERM_REQUEST[:19], bytes(1600),
                LONG_TERM_REQUEST[:4] + b"\x00\x00\x00\x00" + LONG_TERM_REQUEST[8:]):
        with pytest.raises(tw.TurnWireError):
            tw.decode_message(bad)


@given(st.binary(max_size=200))
def test_decoder_raises_only_its_typed_error(data: bytes) -> None:
    try:
        msg = tw.decode_message(b"\x01\x01" + len(data).to_bytes(2, "big")
                                + b"\x21\x12\xa4\x42" + bytes(12) + data)
    except tw.TurnWireError:
        return
    tw.integrity_ok(msg, b"k")
    tw.fingerprint_ok(msg)
