"""The DHT's settings (:class:`DHTConfig`, the same on every node of a network where it says
so) and its counters (:class:`DHTStats`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DHTConfig:
    ksize: int = 20
    alpha: int = 3
    #: value lookups stop once this many holders answered with records
    get_quorum: int = 3
    rpc_timeout_s: float = 1.0
    min_rpc_timeout_s: float = 0.25
    #: consecutive failed requests before a contact leaves the routing table
    max_failures: int = 3
    max_contacts_per_ip: int = 4
    #: routing-table diversity (go-libp2p-kbucket's peerdiversity): contacts of one IPv4 /24
    #: (IPv6 /48) per bucket (common-prefix length with our id) and in the whole table
    max_contacts_per_subnet_per_bucket: int = 2
    max_contacts_per_subnet: int = 10
    #: a lookup's candidates of one /24 (/48): a name is decided by the majority of the
    #: holders a lookup asked, so one network may supply only a few of them. 3 of k = 20:
    #: mallory needs 4 networks to outvote even 11 honest holders, and where honest holders
    #: are few (a small network) one network of hers is outvoted by 4 honest ones (the NAT
    #: lab's eclipse test: 20 Sybil ids from one /24 against 5 honest nodes; with 10 per
    #: lookup her 10 outvoted the 5)
    max_lookup_contacts_per_subnet: int = 3
    #: a network constant, the same on every node of a network: a public node's id is valid
    #: when SHA-256(id) starts with this many zero bits (S/Kademlia's static puzzle). Ids
    #: that fail never enter routing tables or lookups, and their stores are refused; clients
    #: (``client``) need none. 16 bits: ~65,536 key generations, ~1 s on one core, once per
    #: node (the key is kept in the state dir); tools/bench/puzzle.py measures it.
    id_puzzle_bits: int = 16
    #: the uncontested fast path: a name lookup also stops once holders of this many
    #: distinct /24s (/48s) answered and every answer so far named one key; any other key
    #: seen sends it on to the majority of k. 4 is as many networks as mallory needs to
    #: supply a majority of k (4 x ``max_lookup_contacts_per_subnet`` = 12 > 20 / 2), so the
    #: fast path never yields to fewer networks than the majority rule does
    name_uncontested_networks: int = 4
    #: a name lookup (``get_answers``) takes this many disjoint paths (S/Kademlia)
    name_lookup_paths: int = 3
    #: this node is behind NAT: others answer it but never route to it
    client: bool = False
    #: a supernode with thousands of clients legitimately sends bursts to its few peers
    requests_per_ip_per_s: float = 2000.0
    request_burst_per_ip: float = 4000.0
    refresh_interval_s: float = 60.0
    #: only the publisher republishes; records are re-signed by their owners far more often
    republish_interval_s: float = 300.0
    #: a put that no other node took (they were busy, rate-limited or briefly away) is tried
    #: again after these delays, not left to the next republish
    replicate_retry_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


@dataclass
class DHTStats:
    requests_in: Counter[str] = field(default_factory=Counter)
    requests_out: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    timeouts: int = 0
    #: requests sent a second time after their adaptive timeout passed unanswered
    retransmits: int = 0
    evicted: int = 0
    #: pings sent to verify an unknown requester before it may enter the routing table
    verification_pings: int = 0
    #: unknown requesters admitted without a ping: proven at their address with their key
    admitted_proven: int = 0
    #: datagrams sent, by how they were authenticated ("signed", "session")
    sealed: Counter[str] = field(default_factory=Counter)
    #: puts that only this node stored, and how their retries ended
    puts_local_only: int = 0
    replication: Counter[str] = field(default_factory=Counter)
    #: contacts listed in responses that no lookup took as a candidate, by reason
    #: (``bad_node_id``, ``per_subnet``); the routing table counts its own (``router.refused``)
    lookup_contacts_refused: Counter[str] = field(default_factory=Counter)

