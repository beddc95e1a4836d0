"""Iterative lookups: kademlia's spider crawls, rebuilt around requests in flight.

Fixes over ``kademlia.crawling``:

* a round no longer waits for all alpha answers: up to alpha requests stay in flight and each
  answer immediately launches the next closest uncontacted node, so a dead contact occupies one
  slot for one (adaptive, short) timeout instead of stalling the whole lookup; a request past
  that timeout is sent once more by the protocol and still waited for (its answer counts if
  it comes), but frees its slot, as libtorrent's DHT traversal treats a "short timeout";
* responses are parsed with a strict schema; a malformed answer (``{"value": [...]}``,
  ``{"x": 1}``, junk node tuples) counts as a failed contact instead of raising mid-crawl;
* a value lookup merges the answers of several close nodes and returns every valid record,
  newest per (owner, device), instead of the first value that arrived; it also keeps each
  holder's own answer. For a name (records that claim one) it stops early only while every
  holder so far agrees on one signer key: once holders of ``name_uncontested_networks`` (4)
  distinct /24s (/48s) answered (the uncontested fast path), or more than half of k holders;
  any other key seen and it asks all k closest nodes: a few Sybils of one network placed
  next to the key and answering first cannot end the lookup, they contest it (the majority
  decides: :mod:`overlay.dht.names`). Among its k closest candidates, a value lookup asks the
  peers that already share a session key first (no signature, no cookie): the order never
  decides a name, since an early stop needs that many unanimous networks or holders;
* contacts in answers are parsed as tuples, and a ``Node`` is built only for ids new to the
  lookup; the candidates are a sorted list; each request reports its end by callback.

Sybil checks on every lookup (:class:`LookupShare`): a contact listed in a response becomes a
candidate only when its id solves the network's id puzzle, and at most
``max_lookup_contacts_per_subnet`` (3) candidates of one lookup share an IPv4 /24 (IPv6 /48),
so no response can steer a lookup to invalid ids or fill it from one network, and one network
never holds more than a few of the votes that decide a name. A name lookup
(:class:`overlay.dht.disjoint.DisjointValueLookup`) takes d disjoint paths as in S/Kademlia:
the initial contacts are dealt into d sets, each path keeps its own candidates, and no node
is asked by two paths; the holders' answers of all paths are tallied together.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from bisect import insort
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from kademlia.crawling import NodeSpiderCrawl, ValueSpiderCrawl
from kademlia.node import Node, NodeHeap

from overlay.core.addresses import network_key
from overlay.core.identity import id_puzzle_ok
from overlay.core.records import RecordError, SignedRecord
from overlay.dht.routing import ContactTuple

MAX_NODES_PER_RESPONSE = 20
MAX_VALUES_PER_RESPONSE = 48

RpcMethod = Callable[[Node, Node, Callable[[], None]], Awaitable[tuple[bool, Any]]]


#: literal addresses already found valid (contacts repeat across answers); bounded
_VALID_IPS: set[str] = set()
_MAX_VALID_IPS = 4096


def _is_ip(text: str) -> bool:
    """A literal IPv4 or IPv6 address (inet_pton: ~20x cheaper than ipaddress)."""
    if text in _VALID_IPS:
        return True
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
        except OSError:
            continue
        if len(_VALID_IPS) >= _MAX_VALID_IPS:
            _VALID_IPS.clear()
        _VALID_IPS.add(text)
        return True
    return False


class LookupShare:
    """What the paths of one lookup share: which contacts may be candidates (a puzzle-valid
    id; at most ``max_per_subnet`` per /24 or /48 over the whole lookup) and which nodes a
    path already asked (no other path asks them)."""

    def __init__(self, puzzle_bits: int, max_per_subnet: int,
                 refused: Counter[str] | None = None) -> None:
        self.puzzle_bits = puzzle_bits
        self.max_per_subnet = max_per_subnet
        self.candidates: set[bytes] = set()
        self.per_subnet: Counter[str] = Counter()
        self.asked: set[bytes] = set()
        #: contacts refused as candidates, by reason (the node's ``DHTStats`` counter)
        self.refused: Counter[str] = Counter() if refused is None else refused

    @classmethod
    def for_protocol(cls, protocol: Any) -> LookupShare:
        config = protocol.config
        return cls(config.id_puzzle_bits, config.max_lookup_contacts_per_subnet,
                   protocol.stats.lookup_contacts_refused)

    def admit(self, node: Node) -> bool:
        if node.id in self.candidates:
            return True
        if not id_puzzle_ok(node.id, self.puzzle_bits):
            self.refused["bad_node_id"] += 1
            return False
        subnet = network_key(node.ip)
        if self.per_subnet[subnet] >= self.max_per_subnet:
            self.refused["per_subnet"] += 1
            return False
        self.per_subnet[subnet] += 1
        self.candidates.add(node.id)
        return True

    def claim(self, node_id: bytes) -> bool:
        """Take ``node_id`` for one path: False when another path asked it already."""
        if node_id in self.asked:
            return False
        self.asked.add(node_id)
        return True


class IdNodeHeap(NodeHeap):  # type: ignore[misc]
    """kademlia's NodeHeap with O(1) membership (the stock one scans the heap per push), kept
    as a sorted list (a valid heap, so the inherited methods still work) so that the k
    closest are a slice instead of a ``heapq.nsmallest`` per call, and only the contacts its
    lookup's :class:`LookupShare` admits."""

    heap: list[tuple[int, Node]]

    def __init__(self, node: Node, maxsize: int, share: LookupShare) -> None:
        super().__init__(node, maxsize)
        self.ids: set[bytes] = set()
        self.share = share

    def push(self, nodes: Node | list[Node]) -> None:
        for n in nodes if isinstance(nodes, list) else [nodes]:
            if n.id not in self.ids and self.share.admit(n):
                self.ids.add(n.id)
                insort(self.heap, (self.node.long_id ^ n.long_id, n))

    def push_contacts(self, contacts: list[ContactTuple]) -> None:
        """:meth:`push` for contacts as listed in a response: a Node only for new ids."""
        ids = self.ids
        for contact in contacts:
            if contact[0] not in ids:
                self.push(Node(*contact))

    def remove(self, peers: list[bytes]) -> None:
        gone = set(peers) & self.ids
        if gone:
            self.ids -= gone
            self.heap = [entry for entry in self.heap if entry[1].id not in gone]

    def __iter__(self) -> Iterator[Node]:
        return (n for _, n in self.heap[: self.maxsize])

    def get_uncontacted(self) -> list[Node]:
        contacted = self.contacted
        return [n for _, n in self.heap[: self.maxsize] if n.id not in contacted]

    def any_uncontacted(self) -> bool:
        contacted = self.contacted
        return any(n.id not in contacted for _, n in self.heap[: self.maxsize])

    def __contains__(self, node: Node) -> bool:
        return node.id in self.ids


def parse_nodes(raw: object, own_id: bytes) -> list[ContactTuple] | None:
    """Contacts (id, ip, port) from a response's ``nodes`` field, ``own_id`` left out; None
    when the field is malformed."""
    if not isinstance(raw, list) or len(raw) > MAX_NODES_PER_RESPONSE:
        return None
    nodes = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or type(item[0]) is not bytes
            or len(item[0]) != 20
            or type(item[1]) is not str
            or type(item[2]) is not int
            or not 0 < item[2] < 65536
        ):
            return None
        if not _is_ip(item[1]):
            return None
        if item[0] != own_id:
            nodes.append((item[0], item[1], item[2]))
    return nodes


class _InflightCrawl:
    """Shared loop: keep up to alpha requests in flight until the crawl says it is done."""

    protocol: Any
    nearest: IdNodeHeap
    alpha: int
    ksize: int
    node: Node
    answered: dict[bytes, Node]

    def _is_done(self) -> bool:
        return False

    #: wakes the running crawl's loop (set while it runs)
    _nudge: Callable[[], None] | None = None

    def wake_up(self) -> None:
        """Make a running crawl look at its state again (e.g. a shared tally that says it
        is done)."""
        if self._nudge is not None:
            self._nudge()

    def _accept(self, peer: Node, payload: object) -> bool:
        raise NotImplementedError

    async def _crawl(self, rpcmethod: RpcMethod) -> None:
        loop = asyncio.get_running_loop()
        #: requests in flight, by peer id
        pending: set[bytes] = set()
        #: requests past their adaptive timeout: still awaited, no longer holding a slot
        slow: set[bytes] = set()
        #: answered (or failed) requests not looked at yet, in the order they ended
        ended: deque[tuple[Node, asyncio.Future[tuple[bool, Any]]]] = deque()
        wake: list[asyncio.Future[None]] = [loop.create_future()]

        def nudge() -> None:
            if not wake[0].done():
                wake[0].set_result(None)

        self._nudge = nudge

        def went_slow(peer_id: bytes) -> None:
            slow.add(peer_id)
            nudge()

        def on_end(peer: Node, request: asyncio.Future[tuple[bool, Any]]) -> None:
            ended.append((peer, request))
            nudge()

        #: requests past the expected round trip: they hold an alpha slot until slow, but
        #: no longer a slot of a lookup that asks only as many as it still needs (a dead
        #: contact near the end would otherwise stall it for a whole short timeout)
        overdue: set[bytes] = set()

        def went_overdue(peer_ids: list[bytes]) -> None:
            overdue.update(peer_ids)
            nudge()

        while True:
            done = self._is_done()
            if done and not (pending and self._drain_pending()):
                break
            slots = self._slots()
            for peer in [] if done else self._order(self.nearest.get_uncontacted()):
                if (len(pending) - len(slow) >= self.alpha
                        or len(pending) - len(slow | overdue) >= slots):
                    break
                self.nearest.mark_contacted(peer)
                if not self.nearest.share.claim(peer.id):  # another path asked it
                    self.nearest.remove([peer.id])
                    continue
                request = asyncio.ensure_future(
                    rpcmethod(peer, self.node, functools.partial(went_slow, peer.id)))
                request.add_done_callback(functools.partial(on_end, peer))
                pending.add(peer.id)
            if not pending:
                break
            if not ended:
                timer = None
                if not done and slots < self.alpha:
                    waiting = [p for p in pending if p not in overdue]
                    timer = loop.call_later(self.protocol.rtt.expected(), went_overdue, waiting)
                await wake[0]
                wake[0] = loop.create_future()
                if timer is not None:
                    timer.cancel()
            while ended:
                peer, finished = ended.popleft()
                pending.discard(peer.id)
                slow.discard(peer.id)
                overdue.discard(peer.id)
                ok, reply = finished.result()
                if ok and self._accept(peer, reply.payload):
                    self.answered[peer.id] = peer
                else:
                    self.nearest.remove([peer.id])
            if self._enough_answers():
                break
        # stragglers finish on their own and still update the routing table

    def _order(self, uncontacted: list[Node]) -> Iterable[Node]:
        """The order to ask the uncontacted among the k closest candidates in."""
        return uncontacted

    def _slots(self) -> int:
        """How many requests may be in flight now (not counting slow or overdue ones)."""
        return self.alpha

    def _drain_pending(self) -> bool:
        """Done, but keep waiting for (and counting) the answers already asked for, asking
        no one new: while the lookup goes on elsewhere and may still change what is done."""
        return False

    def _enough_answers(self) -> bool:
        """Once k nodes answered and nobody closer is left to ask, slow contacts are not
        waited for: they are not in the result either."""
        return len(self.answered) >= self.ksize and not self.nearest.any_uncontacted()


class OverlayNodeCrawl(_InflightCrawl, NodeSpiderCrawl):  # type: ignore[misc]
    """Find the k closest live nodes to a key."""

    def __init__(self, protocol: Any, node: Node, peers: list[Node], ksize: int, alpha: int):
        NodeSpiderCrawl.__init__(self, protocol, node, [], ksize, alpha)
        self.nearest = IdNodeHeap(node, ksize, LookupShare.for_protocol(protocol))
        self.nearest.push(list(peers))
        self.answered = {}

    async def find(self) -> list[Node]:
        """The k closest nodes that answered."""
        await self._crawl(self.protocol.call_find_node)
        live = sorted(self.answered.values(), key=self.node.distance_to)
        return live[: self.ksize]

    def _accept(self, peer: Node, payload: object) -> bool:
        if not isinstance(payload, dict) or set(payload) != {"nodes"}:
            return False
        nodes = parse_nodes(payload["nodes"], self.protocol.source_node.id)
        if nodes is None:
            return False
        self.nearest.push_contacts(nodes)
        return True


class ValueTally:
    """What the holders of one key answered, over every path of a lookup: the merged records
    (newest per slot), each holder's own answer, and whether the name holders agree."""

    def __init__(self) -> None:
        self.found: dict[tuple[bytes, str], SignedRecord] = {}
        #: each holder's valid records, by node id: one answer per node, never merged
        self.by_holder: dict[bytes, tuple[SignedRecord, ...]] = {}
        #: the signer keys of the name records seen so far, per holder that sent any
        self.signers: set[frozenset[bytes]] = set()
        #: the networks (/24, /48) of the asked holders that sent name records
        self.name_networks: set[str] = set()
        self.rejected = 0
        #: the lookup ended on this tally (a path found it enough for the whole lookup):
        #: answers read after that are not counted, as if they had come after the lookup
        self.closed = False

    @property
    def holders(self) -> int:
        return len(self.by_holder)

    def agreed(self) -> bool:
        """Every holder so far sent records of one and the same signer for a name (or none
        for a name at all, e.g. the supernode directory)."""
        return len(self.signers) <= 1 and all(len(keys) <= 1 for keys in self.signers)

    def add(self, node_id: bytes, held: list[SignedRecord], network: str | None = None) -> None:
        """One holder's answer; ``network`` is the /24 (/48) it answered from (None for this
        node's own records: they count as a holder, never as a network)."""
        if self.closed or node_id in self.by_holder:
            return
        self.by_holder[node_id] = tuple(held)
        signers = frozenset(s.record.signer for s in held if s.record.claimed_name is not None)
        if signers:
            self.signers.add(signers)
            if network is not None:
                self.name_networks.add(network)
        for signed in held:
            current = self.found.get(signed.slot)
            if current is None or signed.seq > current.seq:
                self.found[signed.slot] = signed


class OverlayValueCrawl(_InflightCrawl, ValueSpiderCrawl):  # type: ignore[misc]
    """Collect the records under a key from its closest nodes, newest per slot (one path;
    the paths of a :class:`~overlay.dht.disjoint.DisjointValueLookup` share their ``share``
    and ``tally``)."""

    def __init__(
        self,
        protocol: Any,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        quorum: int,
        verify: Callable[[object], SignedRecord],
        name_quorum: int | None = None,
        share: LookupShare | None = None,
        tally: ValueTally | None = None,
    ) -> None:
        ValueSpiderCrawl.__init__(self, protocol, node, [], ksize, alpha)
        self.nearest = IdNodeHeap(node, ksize, share or LookupShare.for_protocol(protocol))
        self.nearest.push(list(peers))
        self.answered = {}
        self.quorum = quorum
        #: holders that must agree before a name lookup stops early (default: a majority of k)
        self.name_quorum = max(quorum, ksize // 2 + 1) if name_quorum is None else name_quorum
        #: unanimous holders of this many distinct networks also end a name lookup
        self.uncontested_networks: int = protocol.config.name_uncontested_networks
        self.verify = verify
        self.tally = tally or ValueTally()
        #: whether another path of the same lookup (sharing ``tally``) still asks
        self.others_asking: Callable[[], bool] = lambda: False

    @property
    def holders(self) -> int:
        return self.tally.holders

    @property
    def by_holder(self) -> dict[bytes, tuple[SignedRecord, ...]]:
        return self.tally.by_holder

    @property
    def rejected(self) -> int:
        return self.tally.rejected

    def seed(self, node_id: bytes, held: list[SignedRecord]) -> None:
        """Count this node's own records as one holder's answer."""
        if held:
            self.tally.add(node_id, held)

    async def find(self) -> list[SignedRecord]:
        await self._crawl(self.protocol.call_find_value)
        return list(self.tally.found.values())

    def _is_done(self) -> bool:
        tally = self.tally
        if tally.closed:
            return True
        if not tally.signers:  # no name records (e.g. the supernode directory)
            tally.closed = tally.holders >= self.quorum
            return tally.closed
        if not tally.agreed() or tally.holders < self.quorum:
            return False
        # unanimous so far: holders of enough distinct networks (the uncontested fast path)
        # or enough of k end the whole lookup, at once for every path: an answer another
        # path has received but not read yet is not counted (read later, a forged one would
        # turn the tally contested after this path stopped asking, and the honest holders
        # it never asked would be missing from the majority)
        if (len(tally.name_networks) >= self.uncontested_networks
                or tally.holders >= self.name_quorum):
            tally.closed = True
            return True
        # this path's own end: everyone left on its list is only a straggler (whose vote
        # could turn the answer into a conflict at most, never into another owner)
        return not self.nearest.any_uncontacted()

    def agreed(self) -> bool:
        return self.tally.agreed()

    def still_asking(self) -> bool:
        """Whether this path is not done (it may still ask, and its answers may still turn
        the shared tally)."""
        return not self._is_done()

    def _drain_pending(self) -> bool:
        """A path that ended on its own (nobody left on its list but stragglers) still counts
        the answers it asked for while another path still asks: that path may yet find a
        second key, and then these answers (honest holders, often) decide the majority
        (tests/unit/test_disjoint_drain.py; the eclipse lab test failed ~1 run in 5 without
        it). A closed tally ends every path at once."""
        return self.others_asking()

    def _slots(self) -> int:
        """alpha, but no more requests in flight than answers that could still be needed
        for an early stop: each answer adds at most one holder and one network, so asking
        more would only send requests whose answers come after the lookup ended."""
        tally = self.tally
        if not tally.holders or not tally.agreed():
            return self.alpha
        if not tally.signers:
            needed = self.quorum - tally.holders
        else:
            needed = min(self.uncontested_networks - len(tally.name_networks),
                         max(self.quorum, self.name_quorum) - tally.holders)
        return max(1, min(self.alpha, needed))

    def _order(self, uncontacted: list[Node]) -> Iterable[Node]:
        """Closest first, but peers that already share a session key with us before the
        others (no signature either way, no cookie round trip). Which of the k closest
        answer first never decides a name: the early stop needs unanimous holders of
        ``uncontested_networks`` networks (or ``name_quorum`` holders) among them, so a mixed
        set asks all k and the majority decides."""
        holds_ours = self.protocol.sessions.holds_ours
        later = []
        for n in uncontacted:
            if holds_ours(n.id):
                yield n
            else:
                later.append(n)
        yield from later

    def _accept(self, peer: Node, payload: object) -> bool:
        if not isinstance(payload, dict) or set(payload) != {"values", "nodes"}:
            return False
        values = payload["values"]
        nodes = parse_nodes(payload["nodes"], self.protocol.source_node.id)
        if nodes is None or not isinstance(values, list) or len(values) > MAX_VALUES_PER_RESPONSE:
            return False
        self.nearest.push_contacts(nodes)
        held = []
        for wire in values:
            try:
                signed = self.verify(wire)
            except RecordError:
                self.tally.rejected += 1
                continue
            if signed.dht_key != self.node.id:
                self.tally.rejected += 1
                continue
            held.append(signed)
        if held:
            self.tally.add(peer.id, held, network_key(peer.ip))
        return True
