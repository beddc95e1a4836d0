"""Valid examples of every wire format the fuzz targets decode, signed by fixed keys."""

from __future__ import annotations

from typing import Any

import msgpack

from overlay.attach import messages as m
from overlay.attach.errors import ErrorCode
from overlay.core import records
from overlay.core.identity import Identity
from overlay.core.offers import ANSWER_DOMAIN, INVITE_DOMAIN
from overlay.media.signalling import Candidates, Offer, sign_offer
from overlay.relay.protocol import SessionLimits
from overlay.relay.voucher import Voucher, statement_for

NOW = 1_800_000_000.0
ALICE = Identity.from_seed(b"\x11" * 32)
NODE = Identity.from_seed(b"\x22" * 32)
K32, N16, SIG = b"\x07" * 32, b"\x05" * 16, b"\x09" * 64


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


RECORDS = [
    records.presence(ALICE, "alice", "phone", seq=3, supernode_key=NODE.public_key,
                     supernode_host="192.0.2.1", supernode_port=4000,
                     capabilities=("relay",), now=NOW),
    records.presence(ALICE, "alice", "laptop", seq=1, online=False, now=NOW),
    records.supernode(NODE, "198.51.100.9", 4000, seq=7, relay_capacity_bps=10**6,
                      relay_spare_bps=10**5, load=3, max_clients=100, coords=(1.0, 2.0),
                      now=NOW),
    records.name_claim(ALICE, "alice", seq=1, now=NOW),
    records.supernode(NODE, "198.51.100.9", 4000, seq=8, relay_capacity_bps=10**6,
                      relay_spare_bps=10**6, relay_udp_port=4001, now=NOW),
]
#: the signed bodies ``[FORMAT_VERSION, kind, *fields]``
RECORD_BODIES = [unpack(unpack(r.wire)[0]) for r in RECORDS]


def resign_record(body: Any) -> bytes:
    """Sign any body with ALICE's key, as an attacker signs whatever they like."""
    raw = msgpack.packb(body, use_bin_type=True)
    out: bytes = msgpack.packb(
        [raw, ALICE.sign(records.SIGNING_DOMAIN + raw)], use_bin_type=True)
    return out


ALTS = (m.Alternative("192.0.2.7", 4000, K32), m.Alternative("2001:db8::1", 4001))
MESSAGES: list[m.Message] = [
    m.Probe(N16, 12.5), m.ProbeReply(N16, 12.5, 1, True, 250),
    m.ClientHello(1, K32, K32, "alice", "phone", N16, 0), m.ServerHello(1, K32, K32, N16, SIG),
    m.ClientAuth(SIG), m.Error(int(ErrorCode.MALFORMED), "bad message"),
    m.Attach(b"\x01" * 200, b"\x02" * 100), m.AttachOk("198.51.100.9", 53211, 30),
    m.Refused(int(m.RefuseReason.FULL), "full", ALTS), m.Moving("shutting down", ALTS),
    m.Goodbye("bye"), m.Ping(2**64 - 1, -1.0), m.Pong(0, 0.0), m.LookupRequest(9, "bob"),
    m.LookupResponse(9, (b"r1", b"r" * 100)), m.Signal(12, "bob", "laptop", b"offer"),
    m.SignalDelivery("alice", "phone", K32, b"x" * 16), m.SignalResult(11, False, "no"),
    m.DirectoryRequest(13), m.DirectoryResponse(13, (b"s1",)), m.Detach(b"\x02" * 100),
    m.ReachabilityRequest(14, 4000), m.ReachabilityResult(14, "198.51.100.9", True, False),
    m.RelayReserve(15, b"\x07" * 32), m.RelayReserved(15, False, "key limit", 0.0),
]
MESSAGE_BODIES = [m.encode(msg) for msg in MESSAGES]
MESSAGE_VALUES = [unpack(b) for b in MESSAGE_BODIES]

CANDIDATES = Candidates((("192.0.2.1", 4000), ("10.0.0.2", 4001)), (("::1", 5000),),
                        "cone", True)
OFFERS = [
    sign_offer(Offer("invite", N16, "alice", "phone", ALICE.public_key, "bob", K32,
                     CANDIDATES, NOW, relays=(("192.0.2.9", 7000, K32),),
                     relay_secret=b"\x03" * 32), ALICE),
    sign_offer(Offer("answer", N16, "alice", "phone", ALICE.public_key, "bob", K32,
                     Candidates(), NOW, accept=False, reason="busy"), ALICE),
    sign_offer(Offer("invite", N16, "alice", "phone", ALICE.public_key, "bob", K32,
                     CANDIDATES, NOW, relays=(("192.0.2.9", 7000, K32),),
                     relay_secret=b"\x03" * 32, relay_expires=int(NOW) + 720,
                     relay_sigs=(SIG,)), ALICE),
    sign_offer(Offer("invite", N16, "alice", "phone", ALICE.public_key, "bob", K32,
                     CANDIDATES, NOW, purpose="call",
                     relays=(("192.0.2.9", 7000, K32), ("192.0.2.10", 7000, K32)),
                     relay_secret=b"\x03" * 32, relay_udp_ports=(0, 7001)), ALICE),
    # 16 fields: the extensions map (the caller's path salt; a call's bitrate), with and
    # without relay vouchers (nil in the 15th field)
    sign_offer(Offer("invite", N16, "alice", "phone", ALICE.public_key, "bob", K32,
                     CANDIDATES, NOW, purpose="call", path_salt=b"\x05" * 16,
                     bitrate_bps=64_000), ALICE),
    sign_offer(Offer("invite", N16, "alice", "phone", ALICE.public_key, "bob", K32,
                     CANDIDATES, NOW, relays=(("192.0.2.9", 7000, K32),),
                     relay_secret=b"\x03" * 32, relay_expires=int(NOW) + 720,
                     relay_sigs=(SIG,), path_salt=b"\x05" * 16), ALICE),
]
OFFER_BODIES = [o.fields() for o in OFFERS]


def resign_offer(body: Any) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    invite = isinstance(body, list) and bool(body) and body[0] == "invite"
    domain = INVITE_DOMAIN if invite else ANSWER_DOMAIN
    out: bytes = msgpack.packb([raw, ALICE.sign(domain + raw)], use_bin_type=True)
    return out


SIGNAL_ARGS: list[Any] = [
    ["alice", "phone", ALICE.public_key, "bob", "", OFFERS[0].wire],
    ["alice", "phone", ALICE.public_key, "bob", "laptop", b""],
]
USER_REFS = ["alice", "alice#0123abcd", "Bob#" + "A" * 64, "a#", "#", "alice#xyz12345"]

RELAY_KEY = K32
RELAY_TOKEN = b"\x05" * 32
_BOB = Identity.from_seed(b"\x33" * 32)
_STATEMENT = statement_for(RELAY_KEY, RELAY_TOKEN, int(NOW) + 300, ALICE.public_key,
                           _BOB.public_key)
VOUCHER = Voucher(_STATEMENT, _STATEMENT.sign(ALICE), _STATEMENT.sign(_BOB)).to_bytes()
LIMITS = SessionLimits(64 * 2**20, 3600, 10**6)
