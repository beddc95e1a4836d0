"""Discovery: which supernodes the client knows of, how near they are, and where to learn more.

Supernode candidates come from the host cache (:mod:`overlay.client.host_cache`), from the
directory of any live session, and -- when none of those answers -- from the bootstrap nodes'
directory over lookup-only TCP sessions (first contact trusts the bootstrap node's key and
pins it in the cache). Candidates are probed in parallel and ranked by RTT among those that
say they accept clients; the near ones (RTT close to the best) are ordered by chance weighted
by spare capacity (:func:`overlay.client.attach_policy.spread`).

A discovery from the bootstrap nodes is then *refined*: the best candidate's own directory
(the supernodes it knows nearest to itself first, :mod:`overlay.node.known_supernodes`) is
fetched and its new supernodes probed too. Whatever the network's size, a new client's
discovery costs one directory request to a bootstrap node, one to a supernode and at most
2 x ``max_probes`` probes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable

from overlay.attach.adapter import ClientSession, SessionError, probe
from overlay.client.attach_policy import Candidate, Measurement, rank, spread
from overlay.client.host_cache import HostCache
from overlay.client.links import Link, Links
from overlay.client.options import ClientOptions
from overlay.core.identity import Identity
from overlay.core.logs import get_logger
from overlay.core.records import SignedRecord, SupernodeRecord
from overlay.core.resolver import resolve

log = get_logger(__name__)


class Discovery:
    """The host cache, the latest measurements, and the rounds that refresh them."""

    def __init__(self, opts: ClientOptions, cache: HostCache, links: Links) -> None:
        self.opts = opts
        self.cache = cache
        self.links = links
        #: lookup-only sessions and probes use a throwaway key: they publish nothing
        self.lookup_identity = Identity.generate()
        self.measured: dict[bytes, Measurement] = {}
        self.rng = random.Random()

    def learn(self, found: list[SignedRecord]) -> int:
        """Add the supernodes among verified ``found`` records to the cache."""
        now = time.time()
        n = 0
        for signed in found:
            if isinstance(signed.record, SupernodeRecord):
                self.cache.add(Candidate.from_record(signed), now)
                n += 1
        return n

    async def learn_from(self, session: ClientSession) -> bool:
        """Learn the directory ``session``'s supernode knows; False if it did not answer."""
        try:
            self.learn(await session.directory(timeout=self.opts.request_timeout_s))
        except SessionError:
            return False
        return True

    def save_cache(self) -> None:
        try:
            self.cache.save()
        except OSError as exc:
            log.warning("host_cache_not_saved", error=str(exc))

    def failed(self, cand: Candidate) -> None:
        """``cand`` did not answer a connection: remember it as unreachable."""
        self.measured[cand.node_key] = Measurement(None)
        self.cache.failed(cand.node_key)

    def rtt_s(self, cand: Candidate) -> float | None:
        m = self.measured.get(cand.node_key)
        return m.rtt_s if m else None

    def rtts(self) -> dict[bytes, float]:
        """Measured RTTs by node key (those that answered)."""
        return {k: m.rtt_s for k, m in self.measured.items() if m.rtt_s is not None}

    async def probe_all(self, cands: list[Candidate]) -> dict[bytes, Measurement]:
        async def one(cand: Candidate) -> Measurement:
            try:
                r = await probe(cand.host, cand.port, self.lookup_identity,
                                timeout=self.opts.probe_timeout_s, count=2)
            except SessionError:
                return Measurement(None)
            return Measurement(r.rtt_s, r.accepting, r.load_permille)

        chosen = cands[: self.opts.max_probes]
        results = await asyncio.gather(*(one(c) for c in chosen))
        now = time.time()
        out: dict[bytes, Measurement] = {}
        for cand, m in zip(chosen, results, strict=True):
            out[cand.node_key] = m
            self.measured[cand.node_key] = m
            self.cache.measured(cand.node_key, m.rtt_s, now)
        return out

    async def measure(self, link: Link) -> None:
        """Fill in the RTT of a link made without one."""
        measured = await self.probe_all([link.candidate])
        m = measured.get(link.candidate.node_key)
        if m is not None and m.rtt_s is not None:
            link.rtt_s = m.rtt_s

    async def rank(self, cands: list[Candidate], exclude: Iterable[bytes] = ()
                   ) -> list[Candidate]:
        """Probe ``cands`` and rank them (see :func:`overlay.client.attach_policy.rank`, then
        :func:`~overlay.client.attach_policy.spread`)."""
        await self.probe_all(cands)
        return self.ranking(cands, exclude)

    def ranking(self, cands: list[Candidate], exclude: Iterable[bytes] = ()
                ) -> list[Candidate]:
        """``cands`` ranked from the latest measurements (unmeasured ones left out)."""
        ranked = rank(cands, self.measured, exclude=exclude, rng=self.rng)
        return spread(ranked, self.measured, self.rng)

    async def discover(self, exclude: set[bytes]) -> list[Candidate]:
        """Rank every supernode we know of; ask the bootstrap nodes only if none answers."""
        for link in (self.links.backup, self.links.primary):
            if link is not None and link.alive:
                await self.learn_from(link.session)
        known = [c for c in self.cache.candidates() if c.node_key not in exclude]
        ranked = await self.rank(known, exclude) if known else []
        source = "host_cache"
        if not ranked and self.opts.bootstrap:
            fetched = await self.directory_from_bootstrap()
            if fetched:
                self.learn(fetched)
                fresh = {Candidate.from_record(s).node_key for s in fetched}
                known = [c for c in self.cache.candidates()
                         if c.node_key in fresh and c.node_key not in exclude]
                ranked = await self.rank(known, exclude)
                source = "bootstrap"
                if ranked:
                    ranked = await self.refine(ranked, exclude)
        self.save_cache()
        log.info("discovery", source=source, candidates=len(known), usable=len(ranked),
                 best=ranked[0].address if ranked else None)
        return ranked

    async def refine(self, ranked: list[Candidate], exclude: set[bytes]) -> list[Candidate]:
        """Ask the best candidate which supernodes it knows (nearest to it first), probe the
        new ones, and rank all measured candidates again."""
        best = ranked[0]
        try:
            session = await ClientSession.connect(
                best.host, best.port, self.lookup_identity, expected_node_key=best.node_key,
                lookup_only=True, config=self.opts.session_config(),
                timeout=self.opts.connect_timeout_s)
        except SessionError as exc:
            log.bind(supernode=best.address).info("refine_failed", error=str(exc))
            return ranked
        try:
            found = await session.directory(timeout=self.opts.request_timeout_s)
        except SessionError as exc:
            log.bind(supernode=best.address).info("refine_failed", error=str(exc))
            return ranked
        finally:
            session.close("done")
        self.learn(found)
        fresh = [c for c in (Candidate.from_record(s) for s in found
                             if isinstance(s.record, SupernodeRecord))
                 if c.node_key not in self.measured and c.node_key not in exclude]
        if fresh:
            await self.probe_all(fresh)
        known = {c.node_key: c for c in ranked}
        known.update((c.node_key, c) for c in fresh)
        refined = self.ranking(list(known.values()), exclude)
        log.info("discovery_refined", via=best.address, new=len(fresh),
                 best=refined[0].address if refined else None)
        return refined or ranked

    async def directory_from_bootstrap(self) -> list[SignedRecord]:
        addrs = await resolve(self.opts.bootstrap)
        for host, port in addrs:
            address = f"{host}:{port}"
            blog = log.bind(bootstrap=address)
            pinned = self.cache.bootstrap_keys.get(address)
            try:
                session = await ClientSession.connect(
                    host, port, self.lookup_identity, expected_node_key=pinned,
                    lookup_only=True, config=self.opts.session_config(),
                    timeout=self.opts.connect_timeout_s,
                )
            except SessionError as exc:
                blog.warning("bootstrap_unreachable", error=str(exc),
                             pinned_key=pinned.hex() if pinned else None)
                continue
            try:
                if pinned is None:
                    self.cache.pin_bootstrap(address, session.node_key)
                    blog.info("bootstrap_key_pinned", node_key=session.node_key.hex())
                found = await session.directory(timeout=self.opts.request_timeout_s)
            except SessionError as exc:
                blog.warning("bootstrap_directory_failed", error=str(exc))
                continue
            finally:
                session.close("done")
            log.info("directory_fetched", via=address, supernodes=len(found))
            if found:
                return found
        return []

    async def late_candidates(self, session: ClientSession, current: Candidate
                              ) -> list[Candidate] | None:
        """For the late refine: ``session``'s supernode's directory (near it first), probed
        anew together with ``current`` (the supernode itself: RTTs taken at the same time),
        at most ``max_probes`` in all, plus the other supernodes measured before (with that
        measurement). None if it did not answer."""
        try:
            found = await session.directory(timeout=self.opts.request_timeout_s)
        except SessionError:
            return None
        self.learn(found)
        listed = [c for c in (Candidate.from_record(s) for s in found)
                  if c.node_key != current.node_key]
        await self.probe_all([current, *listed[: max(0, self.opts.max_probes - 1)]])
        self.save_cache()
        known = {c.node_key: c for c in self.cache.candidates()}
        known.update((c.node_key, c) for c in listed)
        known.pop(current.node_key, None)
        return [c for k, c in known.items() if k in self.measured]
