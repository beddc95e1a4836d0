"""A minimal TURN client over UDP for the relay benchmark (RFC 8656 / RFC 5766): blocking,
one transaction at a time, used only to set calls up; the datagrams themselves are sent by
:mod:`tools.bench.datagram_load` as ChannelData.

Allocate with long-term credentials (the unauthenticated request's 401 gives REALM and NONCE;
the second carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY), ChannelBind to the peer's
relayed address (which installs the permission too), Refresh with LIFETIME 0 to release.
Every success response must carry a valid MESSAGE-INTEGRITY under the allocation's key.
"""

from __future__ import annotations

import secrets
import socket
import struct
import time
from dataclasses import dataclass

from tools.bench import turn_wire as tw

Address = tuple[str, int]
RTO_S = 0.25
TRIES = 4


class TurnError(RuntimeError):
    """The server refused, did not answer, or answered without valid integrity."""


@dataclass
class Allocation:
    sock: socket.socket
    server: Address
    username: str
    key: bytes
    realm: bytes
    nonce: bytes
    relayed: Address
    mapped: Address | None


def transact(sock: socket.socket, server: Address, msg: bytes, txid: bytes) -> tw.StunMessage:
    """Send ``msg`` (retransmitted RTO, 2 RTO, ...) until the answer with ``txid`` comes."""
    rto = RTO_S
    for _ in range(TRIES):
        sock.sendto(msg, server)
        deadline = time.monotonic() + rto
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                break
            if addr != server:
                continue
            try:
                answer = tw.decode_message(data)
            except tw.TurnWireError:
                continue
            if answer.transaction_id == txid:
                return answer
        rto *= 2
    raise TurnError(f"no answer from {server[0]}:{server[1]}")


def _error(answer: tw.StunMessage) -> tuple[int, str]:
    value = answer.get(tw.ERROR_CODE)
    return tw.decode_error_code(value) if value is not None else (0, "no ERROR-CODE")


def allocate(sock: socket.socket, server: Address, username: str, password: str,
             lifetime_s: int = 600) -> Allocation:
    """A UDP allocation for ``sock`` (bound already) at ``server``."""
    transport = [(tw.REQUESTED_TRANSPORT, tw.UDP_TRANSPORT),
                 (tw.LIFETIME, struct.pack(">I", lifetime_s))]
    txid = secrets.token_bytes(12)
    first = transact(sock, server, tw.encode_message(tw.ALLOCATE, tw.REQUEST, txid, transport),
                     txid)
    realm, nonce = first.get(tw.REALM), first.get(tw.NONCE)
    if first.cls != tw.ERROR or _error(first)[0] != 401 or realm is None or nonce is None:
        raise TurnError(f"expected 401 with REALM and NONCE, got class {first.cls} "
                        f"{_error(first) if first.cls == tw.ERROR else ''}")
    key = tw.long_term_key(username, realm.decode(), password)
    alloc = Allocation(sock, server, username, key, realm, nonce, ("", 0), None)
    answer = request(alloc, tw.ALLOCATE, transport)
    relayed = answer.get(tw.XOR_RELAYED_ADDRESS)
    if relayed is None:
        raise TurnError("Allocate success without XOR-RELAYED-ADDRESS")
    alloc.relayed = tw.decode_xor_address(relayed)
    mapped = answer.get(tw.XOR_MAPPED_ADDRESS)
    alloc.mapped = tw.decode_xor_address(mapped) if mapped is not None else None
    return alloc


def request(alloc: Allocation, method: int, attrs: list[tuple[int, bytes]]) -> tw.StunMessage:
    """An authenticated request; a 438 (stale nonce) is retried once with the new nonce.
    The success response's integrity is checked."""
    for _ in range(2):
        txid = secrets.token_bytes(12)
        msg = tw.encode_message(method, tw.REQUEST, txid, [
            *attrs, (tw.USERNAME, alloc.username.encode()), (tw.REALM, alloc.realm),
            (tw.NONCE, alloc.nonce)], key=alloc.key)
        answer = transact(alloc.sock, alloc.server, msg, txid)
        if answer.cls == tw.SUCCESS and answer.method == method:
            if not tw.integrity_ok(answer, alloc.key):
                raise TurnError("success response without valid MESSAGE-INTEGRITY")
            return answer
        code, reason = _error(answer)
        nonce = answer.get(tw.NONCE)
        if code == 438 and nonce is not None:
            alloc.nonce = nonce
            continue
        raise TurnError(f"method 0x{method:03x} refused: {code} {reason}")
    raise TurnError("stale nonce twice")


def channel_bind(alloc: Allocation, channel: int, peer: Address) -> None:
    request(alloc, tw.CHANNEL_BIND, [(tw.CHANNEL_NUMBER, tw.encode_channel_number(channel)),
                                     (tw.XOR_PEER_ADDRESS, tw.encode_xor_address(peer))])


def release(alloc: Allocation) -> None:
    """Refresh with LIFETIME 0: the server frees the allocation now, not in 10 minutes."""
    request(alloc, tw.REFRESH, [(tw.LIFETIME, struct.pack(">I", 0))])
