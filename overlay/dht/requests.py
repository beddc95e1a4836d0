"""Outgoing DHT requests: send, retransmit once past the adaptive timeout, match answers.

A mixin of :class:`overlay.dht.protocol.OverlayProtocol` (which holds the state declared
below): each request waits on a future resolved by its answer, by the full timeout, or by the
transport closing; an answer withheld until our address is proven is asked again with its
cookie (:mod:`overlay.dht.amplification`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kademlia.node import Node

from overlay.dht.amplification import COOKIE_BYTES, AddressGate
from overlay.dht.config import DHTConfig, DHTStats
from overlay.dht.envelope import ANY_RECIPIENT, Envelope, Flags, Kind, SessionIds, new_msg_id
from overlay.dht.rtt import RttEstimator
from overlay.dht.sessions import SessionTable


@dataclass(frozen=True, slots=True)
class Reply:
    sender_key: bytes
    flags: Flags
    payload: Any


@dataclass
class _Outstanding:
    future: asyncio.Future[tuple[bool, Reply | None]]
    expected_id: bytes | None
    sent_at: float
    method: str
    address: tuple[str, int]
    request: list[Any]
    on_retransmit: Callable[[], None] | None
    timer: asyncio.TimerHandle | None = None
    #: every message id this request went out under (the first copy and its retransmission)
    msg_ids: list[bytes] = field(default_factory=list)
    #: the id of our ephemeral each signed copy carried, by message id
    offered: dict[bytes, bytes] = field(default_factory=dict)



class RequestSender:
    """The requesting half of the protocol (see the module docstring)."""

    transport: asyncio.DatagramTransport | None
    closed: bool
    config: DHTConfig
    stats: DHTStats
    rtt: RttEstimator
    sessions: SessionTable
    gate: AddressGate
    source_node: Node
    _pending: dict[bytes, _Outstanding]

    def node_id_of(self, sender_key: bytes) -> bytes:
        raise NotImplementedError

    def _seal(self, kind: Kind, msg_id: bytes, payload: Any, recipient: bytes,
              keyed: tuple[bytes, SessionIds] | None) -> bytes:
        raise NotImplementedError

    def _note_session(self, env: Envelope, sender_id: bytes, offered: bytes | None) -> None:
        raise NotImplementedError

    def handle_call_response(self, result: tuple[bool, Any], node: Node) -> tuple[bool, Any]:
        raise NotImplementedError

    async def rpc(
        self,
        address: tuple[str, int],
        method: str,
        args: list[Any],
        expected_id: bytes | None = None,
        on_retransmit: Callable[[], None] | None = None,
        once: bool = False,
    ) -> tuple[bool, Reply | None]:
        """Send a request: (True, Reply) or (False, None). An answer withheld until our
        address is proven (``{"truncated": True, "cookie": c}``) is asked again with the
        cookie, once. ``on_retransmit`` is called when the adaptive timeout passed and the
        request went out a second time (a lookup then stops counting it as in flight);
        ``once``: never a second copy (a verification ping to an unproven address, which
        must not send it more than the one request that triggered it)."""
        result = await self._send(address, method, args, expected_id, None, on_retransmit,
                                  once)
        ok, reply = result
        if ok and reply is not None:
            cookie = retry_cookie(reply.payload)
            if cookie is not None:
                self.stats.requests_out["cookie_retry"] += 1
                result = await self._send(address, method, args, expected_id, cookie,
                                          on_retransmit)
        return result

    def _send(
        self,
        address: tuple[str, int],
        method: str,
        args: list[Any],
        expected_id: bytes | None,
        cookie: bytes | None,
        on_retransmit: Callable[[], None] | None,
        once: bool = False,
    ) -> asyncio.Future[tuple[bool, Reply | None]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, Reply | None]] = loop.create_future()
        if self.closed or self.transport is None:
            future.set_result((False, None))
            return future
        request: list[Any] = [method, args] if cookie is None else [method, args, cookie]
        out = _Outstanding(future, expected_id, time.monotonic(), method, address, request,
                           on_retransmit)
        out.timer = (loop.call_later(self.config.rpc_timeout_s, self._timed_out, out) if once
                     else loop.call_later(self.rtt.timeout(expected_id), self._retransmit, out))
        self.stats.requests_out[method] += 1
        self._transmit(out)
        return future

    def _transmit(self, out: _Outstanding) -> None:
        assert self.transport is not None
        msg_id = new_msg_id()
        out.msg_ids.append(msg_id)
        self._pending[msg_id] = out
        keyed = None
        if out.expected_id is not None:
            keyed = self.sessions.sending(out.expected_id, time.monotonic())
        if keyed is None:
            out.offered[msg_id] = self.sessions.offer(time.monotonic())
        self.transport.sendto(
            self._seal(Kind.REQUEST, msg_id, out.request, out.expected_id or ANY_RECIPIENT,
                       keyed),
            out.address)

    def _retransmit(self, out: _Outstanding) -> None:
        """The adaptive timeout passed: send the request once more and wait up to the full
        timeout for an answer to either copy."""
        if out.future.done() or self.closed or self.transport is None:
            return
        self.stats.retransmits += 1
        if out.expected_id is not None:  # it may have lost our session: the copy is signed
            self.sessions.unacknowledge(out.expected_id)
        out.timer = asyncio.get_running_loop().call_later(
            self.config.rpc_timeout_s, self._timed_out, out)
        self._transmit(out)
        if out.on_retransmit is not None:
            out.on_retransmit()

    def _finish(self, out: _Outstanding) -> None:
        if out.timer is not None:
            out.timer.cancel()
        for msg_id in out.msg_ids:
            self._pending.pop(msg_id, None)

    def _timed_out(self, out: _Outstanding) -> None:
        self._finish(out)
        if not out.future.done():
            self.stats.timeouts += 1
            out.future.set_result((False, None))

    def _handle_response(self, env: Envelope, addr: tuple[str, int]) -> None:
        out = self._pending.get(env.msg_id)
        if out is None:
            self.stats.dropped["unsolicited"] += 1
            return
        if env.recipient != self.source_node.id:
            self.stats.dropped["wrong_recipient"] += 1
            return
        sender_id = self.node_id_of(env.sender_key)
        if out.expected_id is not None and sender_id != out.expected_id:
            self.stats.dropped["wrong_sender"] += 1
            return  # someone else answered for the node we asked: keep waiting, then time out
        self._finish(out)
        now = time.monotonic()
        self._note_session(env, sender_id, out.offered.get(env.msg_id))
        if addr == out.address:  # it received our random msg_id there: the address is real
            self.gate.prove(addr, now, env.sender_key)
        if len(out.msg_ids) == 1:  # Karn: an answer to a resent request times nothing
            self.rtt.observe(sender_id, now - out.sent_at)
        if not out.future.done():
            out.future.set_result((True, Reply(env.sender_key, env.flags, env.payload)))
    async def _call(
        self, node: Node, method: str, args: list[Any],
        on_retransmit: Callable[[], None] | None = None,
    ) -> tuple[bool, Any]:
        result = await self.rpc((node.ip, node.port), method, args, expected_id=node.id,
                                on_retransmit=on_retransmit)
        return self.handle_call_response(result, node)

    async def call_find_node(
        self, node_to_ask: Node, node_to_find: Node,
        on_retransmit: Callable[[], None] | None = None,
    ) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "find_node", [node_to_find.id], on_retransmit)

    async def call_find_value(
        self, node_to_ask: Node, node_to_find: Node,
        on_retransmit: Callable[[], None] | None = None,
    ) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "find_value", [node_to_find.id], on_retransmit)

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "ping", [])

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "store", [key, value])


def retry_cookie(payload: object) -> bytes | None:
    """The cookie of an answer withheld until the requester's address is proven."""
    if (
        isinstance(payload, dict)
        and set(payload) == {"truncated", "cookie"}
        and payload["truncated"] is True
        and type(payload["cookie"]) is bytes
        and len(payload["cookie"]) == COOKIE_BYTES
    ):
        return payload["cookie"]
    return None
