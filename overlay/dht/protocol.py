"""The DHT's datagram protocol: kademlia's KademliaProtocol, authenticated and hardened.

Its settings and counters are :mod:`overlay.dht.config`; the requesting half (requests in
flight, retransmission, cookie retries) is :mod:`overlay.dht.requests`.

Fixes over ``kademlia.protocol`` / ``rpcudp``:

* every datagram is authenticated by its sender's key and the sender's id is derived from that
  key (:mod:`overlay.dht.envelope`): signed, or, once both nodes hold each other's signed
  ephemeral key, with a session MAC (:mod:`overlay.dht.sessions`; a response takes the form
  of its request, a retransmission is always signed); junk and foreign datagrams are dropped
  and counted, never raised inside the handler;
* a node enters the routing table only after it proved it receives at its address with its
  key (it answered a request of ours, or came back with its cookie), and never when it says
  it is a client behind NAT; a request from an unknown, unproven node triggers a verification
  ping, to an unproven source address only when no larger than the request, never
  retransmitted, and within a per-/24 budget (below), so it amplifies nothing;
* anti-amplification (:mod:`overlay.dht.amplification`): an answer to a source address that
  has not proven it receives is at most 3x the request; a larger ``find_value`` answer that
  holds values loses contacts from the farthest until it fits (:func:`trim_contacts`), any
  other larger one is replaced by ``{"truncated": True, "cookie": c}`` and
  :meth:`OverlayProtocol.rpc` repeats the request with the cookie (one extra round trip);
* per-IP request rate limits; per-contact adaptive timeouts, and a request unanswered within
  its adaptive timeout is sent once more (a fresh message id) and waited for up to the full
  ``rpc_timeout_s``, a late answer to either copy counting, as TCP backs its RTO off: one lost
  datagram or a queue that briefly outgrew the RTT estimate does not fail a lookup; a contact
  is evicted only after several consecutive failures, not after one timeout;
* ``welcome_if_new`` uses the stored key itself (the stock code hashes the already-hashed
  key, so new nodes close to a key rarely receive it), tests each stored key with one bit
  comparison instead of a routing-table scan, and hands records on unchanged;
* rpcudp's ``__getattr__`` turns any misspelt attribute into a remote call; here it raises.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from overlay.core.addresses import network_key
from overlay.core.identity import Identity, id_puzzle_ok, node_id_for
from overlay.core.logs import get_logger
from overlay.core.rate_limit import KeyedBuckets
from overlay.core.records import RecordError
from overlay.core.tasks import TaskSet
from overlay.dht.amplification import (
    VERIFY_PING_BURST,
    VERIFY_PINGS_PER_S,
    AddressGate,
    trim_contacts,
)
from overlay.dht.config import DHTConfig, DHTStats
from overlay.dht.envelope import (
    ANY_RECIPIENT,
    NO_EPHEMERAL,
    SESSION_HEADER_BYTES,
    SIGNED_HEADER_BYTES,
    Envelope,
    EnvelopeError,
    Flags,
    Kind,
    SessionIds,
    authenticate_mac,
    authenticate_signature,
    new_msg_id,
    pack_body,
    parse,
    seal,
    seal_body,
    seal_session,
    seal_session_body,
)
from overlay.dht.fairness import NotClose
from overlay.dht.replay import ReplayGuard
from overlay.dht.requests import RequestSender, _Outstanding
from overlay.dht.routing import OverlayRoutingTable, TableLimits
from overlay.dht.rtt import RttEstimator
from overlay.dht.sessions import SessionTable, ephemeral_id
from overlay.dht.storage import RecordStorage

log = get_logger(__name__)

AppHandler = Callable[[tuple[str, int], bytes, list[Any]], Any]
#: sender keys whose node ids :meth:`OverlayProtocol.node_id_of` remembers
MAX_NODE_IDS = 65536
CORE_METHODS = frozenset({"ping", "store", "find_node", "find_value"})
#: a ``store`` refusal: the sender's node id does not solve the network's id puzzle
BAD_NODE_ID = "bad_node_id"


class OverlayProtocol(RequestSender, KademliaProtocol):  # type: ignore[misc]
    def __init__(
        self,
        source_node: Node,
        storage: RecordStorage,
        ksize: int,
        identity: Identity,
        config: DHTConfig,
        stats: DHTStats,
        handlers: dict[str, AppHandler],
    ) -> None:
        # KademliaProtocol.__init__ would build a stock RoutingTable; set fields ourselves.
        self._wait_timeout = config.rpc_timeout_s
        self.transport: asyncio.DatagramTransport | None = None
        self.router = OverlayRoutingTable(self, ksize, source_node, TableLimits(
            config.id_puzzle_bits, config.max_contacts_per_ip,
            config.max_contacts_per_subnet_per_bucket, config.max_contacts_per_subnet))
        self.storage = storage
        self.source_node = source_node
        self.identity = identity
        self.config = config
        self.stats = stats
        self.handlers = handlers
        self.flags = Flags.CLIENT if config.client else Flags.NONE
        self.rtt = RttEstimator(config.min_rpc_timeout_s, config.rpc_timeout_s)
        self.failures: Counter[bytes] = Counter()
        #: requests per source IP, and verification pings per source network (/24, /48)
        self.limiter: KeyedBuckets[str] = KeyedBuckets(
            config.requests_per_ip_per_s, config.request_burst_per_ip, 65536)
        self._pending: dict[bytes, _Outstanding] = {}
        self._verifying: set[bytes] = set()
        self.gate = AddressGate(time.monotonic())
        self.verify_budget: KeyedBuckets[str] = KeyedBuckets(
            VERIFY_PINGS_PER_S, VERIFY_PING_BURST, 4096)
        self.sessions = SessionTable(source_node.id, identity.public_key, time.monotonic())
        #: the sizes of a verification ping, signed and under a session
        self._ping_bytes = len(seal(identity, Kind.REQUEST, new_msg_id(), self.flags,
                                    ["ping", []], recipient=ANY_RECIPIENT))
        self._session_ping_bytes = len(seal_session(
            b"\0" * 32, identity.public_key, SessionIds(b"\0" * 8, b"\0" * 8), Kind.REQUEST,
            new_msg_id(), self.flags, ["ping", []], recipient=b"\1" * 20))
        self.replay = ReplayGuard(source_node.id)
        self._public_key = identity.public_key
        #: node ids by sender key (a SHA-256 each, several times per datagram otherwise)
        self._node_ids: dict[bytes, bytes] = {}
        #: the wall clock that stamps our datagrams and judges others' (tests move it)
        self.clock: Callable[[], float] = time.time
        self._tasks = TaskSet()
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # -- transport ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for out in self._pending.values():
            if out.timer is not None:
                out.timer.cancel()
            if not out.future.done():
                out.future.set_result((False, None))
        self._pending.clear()
        self._tasks.cancel_all()

    def error_received(self, exc: Exception) -> None:
        self.stats.dropped["socket_error"] += 1

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed:
            return
        try:
            env = self._open(data)
        except EnvelopeError as exc:
            self.stats.dropped[exc.reason] += 1
            return
        try:
            if env.kind is Kind.REQUEST:
                self._handle_request(env, (addr[0], addr[1]), len(data))
            else:
                self._handle_response(env, (addr[0], addr[1]))
        except Exception:  # a bug must not take the node down; count and log it
            self.stats.dropped["handler_error"] += 1
            log.exception("dht_handler_error", peer=f"{addr[0]}:{addr[1]}")

    def node_id_of(self, sender_key: bytes) -> bytes:
        """:func:`node_id_for`, remembered (at most :data:`MAX_NODE_IDS` keys)."""
        node_id = self._node_ids.get(sender_key)
        if node_id is None:
            if len(self._node_ids) >= MAX_NODE_IDS:
                self._node_ids.clear()
            node_id = self._node_ids[sender_key] = node_id_for(sender_key)
        return node_id

    def _open(self, data: bytes) -> Envelope:
        """Authenticate a datagram: its signature, or its MAC under the session it names."""
        parsed = parse(data)
        if parsed.session is None:
            return authenticate_signature(parsed)
        key = self.sessions.receiving(self.node_id_of(parsed.sender_key), parsed.session,
                                      time.monotonic())
        if key is None:
            raise EnvelopeError("no_session", "no session with these ephemerals here")
        return authenticate_mac(parsed, key)

    def _seal(self, kind: Kind, msg_id: bytes, payload: Any, recipient: bytes,
              keyed: tuple[bytes, SessionIds] | None) -> bytes:
        """Our datagram: under the session ``keyed`` names, else signed with our ephemeral."""
        return self._seal_body(kind, msg_id, pack_body(kind, payload), recipient, keyed)

    def _seal_body(self, kind: Kind, msg_id: bytes, body: bytes, recipient: bytes,
                   keyed: tuple[bytes, SessionIds] | None) -> bytes:
        """:meth:`_seal` for a payload packed by :func:`pack_body`."""
        if keyed is not None:
            self.stats.sealed["session"] += 1
            return seal_session_body(keyed[0], self._public_key, keyed[1], kind, msg_id,
                                     self.flags, body, recipient=recipient, now=self.clock())
        self.stats.sealed["signed"] += 1
        return seal_body(self.identity, kind, msg_id, self.flags, body, recipient=recipient,
                         now=self.clock(), ephemeral=self.sessions.offer(time.monotonic()))

    def _note_session(self, env: Envelope, sender_id: bytes, offered: bytes | None) -> None:
        """What an accepted datagram tells about the session with its sender: a signed one
        shows its ephemeral (and, answering a request that carried ours, that it holds
        ours); a session datagram shows it holds the ephemeral of ours it names."""
        if env.session is not None:
            self.sessions.acknowledge(sender_id, env.session.recipient_eph_id)
            return
        if env.ephemeral != NO_EPHEMERAL:
            self.sessions.learn(sender_id, env.sender_key, env.ephemeral)
            if offered is not None:
                self.sessions.acknowledge(sender_id, ephemeral_id(offered))

    def handle_call_response(self, result: tuple[bool, Any], node: Node) -> tuple[bool, Any]:
        ok, reply = result
        if not ok:
            self.failures[node.id] += 1
            if self.failures[node.id] >= self.config.max_failures:
                del self.failures[node.id]
                if not self.router.is_new_node(node):
                    self.router.remove_contact(node)
                    self.stats.evicted += 1
                    self.rtt.forget(node.id)
            return result
        self.failures.pop(node.id, None)
        if reply.flags is not Flags.CLIENT:  # the only flag (a member: cheaper than &)
            self.welcome_if_new(node)
        return result

    # -- routing table admission ----------------------------------------------------------

    def welcome_if_new(self, node: Node) -> None:
        """Add a node that has just answered us; hand it the records it is now closest to."""
        if not self.router.is_new_node(node):
            self.router.add_contact(node)  # refresh its position in the bucket
            return
        if not self.router.add_contact(node) or self.router.is_new_node(node):
            return
        keys = self._keys_to_hand_over(node)
        if keys:
            self._spawn(self._hand_over(node, keys))

    def _keys_to_hand_over(self, node: Node) -> list[bytes]:
        """Stored keys the new node should hold. While the table holds fewer than k contacts
        every node is among the k closest of every key, so it gets them all (from each holder
        that meets it as new: the closest holder may have met it before it held the key, and
        a node that joined after a record was published would hold it only at the next
        republish; a supernode missed another's directory record so). Otherwise the keys it
        is closer to than we are, that we are the closest known holder of.

        d(new, K) < d(us, K) holds exactly when K agrees with ``new`` on the highest bit where
        ``new`` and ``us`` differ: one integer test per key; a key that fails it costs
        nothing more.
        """
        if len(self.router) < self.router.ksize:
            return list(self.storage.keys())
        ours = self.source_node.long_id
        top_bit = (ours ^ node.long_id).bit_length() - 1
        if top_bit < 0:
            return []
        new_bit = (node.long_id >> top_bit) & 1
        chosen = []
        for key in self.storage.keys():
            key_long = int.from_bytes(key, "big")
            if (key_long >> top_bit) & 1 != new_bit:
                continue
            keynode = Node(key)
            closest_other = self.router.find_neighbors(keynode, k=1, exclude=node)
            if closest_other and closest_other[0].distance_to(keynode) < ours ^ key_long:
                continue  # a closer holder is responsible for handing it over
            chosen.append(key)
        return chosen

    async def _hand_over(self, node: Node, keys: list[bytes]) -> None:
        for key in keys:
            for signed in self.storage.values(key):
                ok, _ = await self.call_store(node, key, signed.wire)
                if not ok:
                    return

    def _verify_unknown_sender(
        self, sender_key: bytes, addr: tuple[str, int], size: int, now: float
    ) -> None:
        node_id = self.node_id_of(sender_key)
        known = self.router.find_contact(node_id)
        if known is not None and (known.ip, known.port) == addr:
            return  # the common case: a contact of ours
        if node_id in self._verifying or len(self._verifying) >= 64:
            return
        if not id_puzzle_ok(node_id, self.config.id_puzzle_bits):
            self.stats.dropped["verify_bad_node_id"] += 1  # it could never enter the table
            return
        node = Node(node_id, addr[0], addr[1])
        if not self.router.is_new_node(node):
            return
        if self.gate.proven_for(addr, sender_key, now):
            # its key's holder already received at this address what we sent (it answered
            # us from there, or came back with its cookie): what the ping would show
            self.stats.admitted_proven += 1
            self.welcome_if_new(node)
            return
        # its bucket is full and would not split: a ping would buy nothing but a
        # replacement-cache entry and, on the answer, a ping of the bucket's head
        if self.router.bucket_closed(node):
            self.stats.dropped["verify_ping_bucket_full"] += 1
            return
        ping_bytes = (self._session_ping_bytes if self.sessions.established(node_id, now)
                      else self._ping_bytes)
        if not self.gate.is_proven(addr, now) and (
            ping_bytes > size or not self.verify_budget.allow(network_key(addr[0]), now)
        ):
            self.stats.dropped["verify_ping_withheld"] += 1
            return
        self._verifying.add(node_id)
        self.stats.verification_pings += 1
        once = not self.gate.is_proven(addr, now)

        async def verify() -> None:
            try:
                result = await self.rpc(addr, "ping", [], expected_id=node_id, once=once)
                self.handle_call_response(result, node)
            finally:
                self._verifying.discard(node_id)

        self._spawn(verify())

    # -- incoming requests ----------------------------------------------------------------

    def _handle_request(self, env: Envelope, addr: tuple[str, int], size: int) -> None:
        now = time.monotonic()
        if not self.limiter.allow(addr[0], now):
            self.stats.dropped["rate_limited"] += 1
            return
        payload = env.payload
        if (
            not isinstance(payload, list)
            or len(payload) not in (2, 3)
            or type(payload[0]) is not str
            or not isinstance(payload[1], list)
            or (len(payload) == 3 and type(payload[2]) is not bytes)
        ):
            if self._refused_as_replay(env, "", self.clock()):
                return
            self.stats.dropped["malformed"] += 1
            self._respond(env, addr, {"error": "malformed request"}, size)
            return
        method, args = payload[0], payload[1]
        if self._refused_as_replay(env, method, self.clock()):
            return
        sender_id = self.node_id_of(env.sender_key)
        self._note_session(env, sender_id, None)
        if len(payload) == 3 and not self.gate.check_cookie(payload[2], addr, env.sender_key,
                                                            now):
            self.stats.dropped["bad_cookie"] += 1  # answered as if it carried none
        if method == "store" and not id_puzzle_ok(sender_id, self.config.id_puzzle_bits):
            self.storage.stats.rejected[BAD_NODE_ID] += 1
            result = {"ok": False, "reason": BAD_NODE_ID}
        elif method in CORE_METHODS:
            result = getattr(self, f"rpc_{method}")(addr, *args) if self._arity_ok(
                method, args
            ) else {"error": f"bad arguments for {method}"}
        elif method in self.handlers:
            try:
                result = self.handlers[method](addr, env.sender_key, args)
            except (ValueError, TypeError) as exc:
                result = {"error": str(exc)[:200]}
        else:
            self.stats.dropped["unknown_method"] += 1
            result = {"error": f"unknown method {method[:40]!r}"}
        self.stats.requests_in[method if method in CORE_METHODS else "other"] += 1
        cookie_sent = self._respond(env, addr, result, size)
        # a sender handed a cookie comes back with it, which proves it at this address with
        # its key (then admitted without a ping): a ping now would show nothing more
        if env.flags is not Flags.CLIENT and not cookie_sent:
            self._verify_unknown_sender(env.sender_key, addr, size, now)

    def _refused_as_replay(self, env: Envelope, method: str, wall: float) -> bool:
        reason = self.replay.check(env, method, wall)
        if reason is None:
            return False
        self.stats.dropped[reason] += 1
        return True

    @staticmethod
    def _arity_ok(method: str, args: list[Any]) -> bool:
        def is_key(x: object) -> bool:
            return type(x) is bytes and len(x) == 20

        if method == "ping":
            return not args
        if method == "store":
            return len(args) == 2 and is_key(args[0]) and type(args[1]) is bytes
        return len(args) == 1 and is_key(args[0])

    def _respond(self, env: Envelope, addr: tuple[str, int], result: Any, size: int) -> bool:
        """Answer ``env``; True when the answer was withheld for a cookie round trip."""
        if self.transport is None or self.closed:
            return False
        requester = self.node_id_of(env.sender_key)
        now = time.monotonic()
        # a response takes the form of its request
        keyed = None if env.session is None else self.sessions.reply(requester, env.session, now)
        if keyed is None and env.session is None and env.ephemeral != NO_EPHEMERAL:
            self.sessions.answered(requester, now)  # our answer carries our ephemeral
        body = pack_body(Kind.RESPONSE, result)
        header = SIGNED_HEADER_BYTES if keyed is None else SESSION_HEADER_BYTES
        allowed = self.gate.allowed(size)
        if header + len(body) > allowed and not self.gate.is_proven(addr, now):
            # sized before sealing: an answer too large for an unproven requester is signed
            # (or MACed) once, in the form it goes out in
            trimmed = trim_contacts(result, header + len(body) - allowed)
            if trimmed is not None:
                body = pack_body(Kind.RESPONSE, trimmed)
                if header + len(body) <= allowed:
                    self.stats.dropped["trimmed_unproven"] += 1
                    self.transport.sendto(
                        self._seal_body(Kind.RESPONSE, env.msg_id, body, requester, keyed),
                        addr)
                    return False
            self.stats.dropped["truncated_unproven"] += 1
            cookie = self.gate.cookie(addr, env.sender_key, now)
            datagram = self._seal(Kind.RESPONSE, env.msg_id,
                                  {"truncated": True, "cookie": cookie}, requester, keyed)
            if len(datagram) > allowed:
                return False  # cannot happen for a signed request; never reflect more
            self.transport.sendto(datagram, addr)
            return True
        self.transport.sendto(self._seal_body(Kind.RESPONSE, env.msg_id, body, requester, keyed),
                              addr)
        return False

    def rpc_ping(self, sender: tuple[str, int]) -> Any:
        return {"pong": True}

    def rpc_store(self, sender: tuple[str, int], key: bytes, value: bytes) -> Any:
        if not self.router.is_among_closest(self.source_node, key,
                                            self.storage.limits.close_slack):
            self.storage.stats.rejected[NotClose.reason] += 1
            return {"ok": False, "reason": NotClose.reason}
        try:
            self.storage.put(key, value, source=sender[0])
        except RecordError as exc:
            return {"ok": False, "reason": exc.reason}
        return {"ok": True}

    def _neighbors(self, sender: tuple[str, int], key: bytes) -> list[Any]:
        return self.router.closest_contacts(key, sender)

    def rpc_find_node(self, sender: tuple[str, int], key: bytes) -> Any:
        return {"nodes": self._neighbors(sender, key)}

    def rpc_find_value(self, sender: tuple[str, int], key: bytes) -> Any:
        return {
            "values": [s.wire for s in self.storage.answer(key, 48)],
            "nodes": self._neighbors(sender, key),
        }
