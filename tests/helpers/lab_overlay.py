"""A whole overlay inside the NAT lab, for end-to-end tests and benchmarks.

:class:`LabOverlay` builds a :class:`tools.natlab.Lab` with a bootstrap node and N supernodes
on the public segment and one client daemon per given host (each behind its own router of the
given kind), all as real ``overlay`` processes (``--log-json``, one log file each in the work
dir). It talks to the clients over their Unix control sockets and runs ``overlay send`` for
them::

    with LabOverlay(tmp, clients={"cone-1": "cone", "public-2": "public"}) as ov:
        ov.wait_attached()
        f = ov.make_file("cone-1", "hello.bin", 1 << 20)
        res = ov.send("cone-1", "public-2", f)        # public-2 adds cone-1 as a contact first
        ov.wait_inbox_file("public-2", "hello.bin")

Host names are client user names too (they satisfy the user name pattern). Unix sockets work
across network namespaces (they are file-system objects), so the test process reaches every
client's control socket directly; ``overlay send`` still runs inside the sender's host.

Cleanup: :meth:`close` (or leaving the ``with``) SIGTERMs every daemon, SIGKILLs what is left
after a grace period and tears the lab down (which kills anything else in its namespaces).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from overlay.client.control import ControlSocketError, control_request
from tests.helpers.daemons import Daemon, overlay_argv
from tests.helpers.overlay_net import DIRECTORY_ARGS
from tests.helpers.repo import REPO
from tools.natlab import Lab
from tools.natlab.topology import KINDS as LAB_KINDS

#: the kinds of the connectivity matrix (every lab kind may be given to :class:`LabOverlay`)
KINDS = ("public", "firewalled", "cone", "symmetric", "tcp-only", "cgnat", "mapping")
#: the matrix's kinds before ``cgnat`` and ``mapping`` joined (the impaired run keeps to them)
BASE_KINDS = KINDS[:5]
PORT = 4000
OVERLAY = overlay_argv([])

T = TypeVar("T")

_DIRECTORY = """
import asyncio, json, sys
from overlay.core.identity import Identity
from overlay.attach.adapter import ClientSession
async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    s = await ClientSession.connect(host, int(port), Identity.generate(),
                                    expected_node_key=None, lookup_only=True)
    print(json.dumps(["%s:%d" % (r.record.host, r.record.port) for r in await s.directory()]))
asyncio.run(main())
"""


def lab_available() -> tuple[bool, str]:
    """(True, "") when this process can build a NAT lab, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "the NAT lab needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return False, f"the NAT lab needs the {tool!r} command"
    return True, ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def two_per_kind(kinds: Iterable[str] = KINDS) -> dict[str, str]:
    """``{"public-1": "public", "public-2": "public", "cone-1": "cone", ...}``."""
    return {f"{kind}-{i}": kind for kind in kinds for i in (1, 2)}


#: the UDP port of each supernode's datagram relay (calls prefer it to the TCP relay); a
#: supernode host is ``public`` (no router, no filtering), so nothing needs opening for it
RELAY_UDP_PORT = 4001

#: Every lab host's public address is in 198.18.0.0/24 (tools/natlab/topology), so a relay
#: would count all the lab's clients as one network: its per-/24 relay limits (4 sessions,
#: half the budget) would stand between the lab's concurrent relayed pairs. Real deployments
#: keep the defaults; the per-/24 limits are tests/adversary/test_relay_abuse.py's.
LAB_RELAY_ARGS = ("--relay-max-sessions-per-subnet", "64", "--relay-subnet-share", "1",
                  "--relay-udp-port", str(RELAY_UDP_PORT))


@dataclass
class SendResult:
    """One ``overlay send`` run."""

    src: str
    dst: str
    file: Path
    returncode: int
    stdout: str
    stderr: str
    #: wall time of the whole command (process start to exit), seconds
    seconds: float
    started_at: float
    json: dict[str, Any] | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def path(self) -> str | None:
        return self.json.get("path") if self.json else None

    @property
    def output(self) -> str:
        return (self.stdout + "\n" + self.stderr).strip()

    def describe(self) -> str:
        return (f"overlay send {self.dst} {self.file.name} (from {self.src}): "
                f"rc={self.returncode}{' TIMEOUT' if self.timed_out else ''} "
                f"in {self.seconds:.2f}s\n  stdout: {self.stdout.strip()[:600]}\n"
                f"  stderr: {self.stderr.strip()[:600]}")


#: the supernode session heartbeat on clean lab links: dead after 3 s of silence, quick failovers
CLEAN_HEARTBEAT_S = 1.0
#: ... and on impaired ones. With 1 s the attachment itself flaps there: a lost TCP segment at
#: RTT 400 ms is retransmitted after ~1 s, twice is 3 s (three failovers in two minutes were
#: seen, and a send during a failover fails for reasons that are not connectivity). 5 s (dead
#: after 15 s) keeps attachments stable. Production's default is 30 s.
IMPAIRED_HEARTBEAT_S = 5.0


@dataclass
class LabOverlay:
    """Bootstrap node + supernodes on public hosts, client daemons on the given hosts.

    ``clients`` maps host name -> router kind (a ``tools.natlab`` kind); each client runs as user
    ``<host>``. ``netem`` (e.g. ``{"delay_ms": 100, "loss_pct": 2}``) is put on the uplink of
    every client host and (unless ``netem_supernodes`` is False) every supernode host (not
    the bootstrap node's). ``work`` holds
    logs, state dirs, inboxes and control sockets (keep the path short: a socket path is at
    most 107 bytes).
    """

    work: Path
    clients: dict[str, str]
    supernodes: int = 2
    netem: dict[str, float] | None = None
    #: ``netem`` on the supernodes' links too (False: the clients' uplinks only, as for
    #: relays in a data centre)
    netem_supernodes: bool = True
    #: the supernode session heartbeat: None is 1 s on clean links (quick failovers) and
    #: :data:`IMPAIRED_HEARTBEAT_S` under ``netem``
    heartbeat_s: float | None = None
    client_args: Sequence[str] = ()
    supernode_args: Sequence[str] = ()
    lab_prefix: str | None = None
    #: more lab hosts (name -> kind) where the test runs its own programs; no daemon starts
    extra_hosts: dict[str, str] = field(default_factory=dict)
    #: client host -> the (earlier) client host whose router and LAN it shares (both must be
    #: given the same kind in ``clients``)
    same_lan: dict[str, str] = field(default_factory=dict)
    #: more topology keys of client hosts, e.g. ``{"igd-1": {"methods": ["upnp"]}}``
    host_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the bootstrap node and each supernode listen in a /24 of their own (198.18.100.0/24,
    #: 198.18.101.0/24, ...; see :meth:`own_subnet`) instead of all sharing the public
    #: segment's 198.18.0.0/24, as independent operators on the internet do
    own_subnets: bool = False
    #: see :meth:`_no_proxy_arp_delay`
    no_proxy_arp_delay: bool = True
    daemons: dict[str, Daemon] = field(default_factory=dict)
    lab: Lab | None = None

    # -- layout ---------------------------------------------------------------------------

    @property
    def heartbeat(self) -> float:
        """The heartbeat the daemons run with (``heartbeat_s``, or its default)."""
        if self.heartbeat_s is not None:
            return self.heartbeat_s
        return IMPAIRED_HEARTBEAT_S if self.netem else CLEAN_HEARTBEAT_S

    @property
    def supernode_hosts(self) -> list[str]:
        return [f"sn{i + 1}" for i in range(self.supernodes)]

    def topology(self) -> dict[str, Any]:
        hosts: dict[str, dict[str, Any]] = {"boot": {"kind": "public"}}
        for sn in self.supernode_hosts:
            hosts[sn] = {"kind": "public"}
        for host, kind in self.clients.items():
            if kind not in LAB_KINDS:
                raise ValueError(f"{host}: unknown kind {kind!r}")
            hosts[host] = {"kind": kind}
            if host in self.same_lan:
                hosts[host]["router"] = self.same_lan[host]
            hosts[host].update(self.host_options.get(host, {}))
        for host, kind in self.extra_hosts.items():
            hosts[host] = {"kind": kind}
        if self.netem:  # a host on another's LAN shares that host's (impaired) uplink
            impaired = [*(self.supernode_hosts if self.netem_supernodes else []),
                        *self.clients]
            for host in impaired:
                if host not in self.same_lan:
                    hosts[host]["netem"] = dict(self.netem)
        return {"hosts": hosts}

    @property
    def bootstrap_addr(self) -> str:
        return f"{self.daemon_ip('boot')}:{PORT}"

    def supernode_addr(self, host: str) -> str:
        return f"{self.daemon_ip(host)}:{PORT}"

    def daemon_ip(self, host: str) -> str:
        """The address the bootstrap node or a supernode on ``host`` listens on."""
        assert self.lab is not None
        if self.own_subnets:
            return self.own_subnet(host).replace(".0/24", ".1")
        return self.lab.public_ip(host)

    def own_subnet(self, host: str) -> str:
        """The /24 of the bootstrap host (198.18.100.0/24) or of supernode host i
        (198.18.(100+i).0/24), with ``own_subnets``."""
        index = ["boot", *self.supernode_hosts].index(host)
        return f"198.18.{100 + index}.0/24"

    def add_subnet(self, owner: str, subnet: str, addresses: Iterable[str]) -> None:
        """Give public host ``owner`` ``addresses`` in ``subnet`` (a /24) and route that /24
        to it from every other host (from the router of a host behind one), as the internet
        routes an operator's network to its machines."""
        lab = self.lab
        assert lab is not None
        if lab.kind(owner) != "public":
            raise ValueError(f"{owner}: only a public host can own a subnet")
        for ip in addresses:
            lab.run(owner, ["ip", "addr", "add", f"{ip}/24", "dev", lab.iface(owner)],
                    check=True)
        gateway = lab.public_ip(owner)
        for host in lab.hosts:
            if host == owner or host in self.same_lan:  # its router got the route
                continue
            # the route goes where the public segment is: the host, its router, or its
            # carrier router (cgnat: the home router routes all of 198.18.0.0/15 there)
            kind = lab.kind(host)
            lab.run(host, ["ip", "route", "add", subnet, "via", gateway], check=True,
                    router=kind not in ("public", "cgnat"), carrier=kind == "cgnat")

    def sock(self, host: str) -> Path:
        return self.work / "s" / f"{host}.sock"

    def inbox(self, host: str) -> Path:
        return self.work / "inbox" / host

    def outbox(self, host: str) -> Path:
        return self.work / "out" / host

    def log_path(self, host: str) -> Path:
        return self.work / "logs" / f"{host}.log"

    def user(self, host: str) -> str:
        return host

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LabOverlay:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, wait: bool = True) -> LabOverlay:
        """Build the lab and start every daemon; with ``wait`` also wait until every client
        is attached (see :meth:`wait_attached`)."""
        for sub in ("s", "logs", "inbox", "out", "state"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.lab = Lab(self.topology(), prefix=self.lab_prefix)
        self.lab.start()
        if self.no_proxy_arp_delay:
            self._no_proxy_arp_delay()
        if self.own_subnets:
            for host in ["boot", *self.supernode_hosts]:
                self.add_subnet(host, self.own_subnet(host), [self.daemon_ip(host)])
        boot = self.bootstrap_addr
        self._start("boot", "bootstrap", ["bootstrap", "--listen", boot,
                                           "--state-dir", str(self.work / "state" / "boot"),
                                           *DIRECTORY_ARGS])
        for sn in self.supernode_hosts:
            self._start(sn, "supernode", [
                "supernode", "--listen", self.supernode_addr(sn), "--bootstrap", boot,
                "--heartbeat", f"{self.heartbeat:g}",
                "--state-dir", str(self.work / "state" / sn), *LAB_RELAY_ARGS, *DIRECTORY_ARGS,
                *self.supernode_args])
        self.wait_directory(self.supernode_hosts)
        for host in self.clients:
            self._start(host, "client", [
                "client", "--user", self.user(host),
                "--state-dir", str(self.work / "state" / host),
                "--control", str(self.sock(host)), "--inbox", str(self.inbox(host)),
                "--bootstrap", boot, "--no-supernode", "--heartbeat", f"{self.heartbeat:g}",
                *self.client_args])
        if wait:
            self.wait_attached()
        return self

    def _no_proxy_arp_delay(self) -> None:
        """A firewalled host's router answers ARP for the host's public /32 by proxy ARP, and
        Linux delays proxy replies by a random 0..``proxy_delay`` (default 80 = 0.8 s). So the
        first packet from the public segment to a firewalled host waited 0.1-0.4 s for ARP,
        which no real firewalled host on the internet does, and made direct TCP lose the
        path race to UDP (started 0.25 s later). Set it to 0 on those routers' WAN links."""
        assert self.lab is not None
        for host, kind in self.clients.items():
            if kind == "firewalled":
                wan = self.lab.iface(host, router=True)
                self.lab.run(host, ["sysctl", "-qw", f"net.ipv4.neigh.{wan}.proxy_delay=0"],
                             router=True, check=True)

    def _start(self, host: str, role: str, args: list[str]) -> Daemon:
        """``overlay ARGS`` inside ``host``'s namespace (the lab's ``popen`` puts it in its
        own process group)."""
        assert self.lab is not None
        daemon = Daemon(args, self.log_path(host), name=host, role=role,
                        launcher=functools.partial(self.lab.popen, host), process_group=True)
        self.daemons[host] = daemon.start()
        return daemon

    def directory(self, timeout: float = 20.0) -> list[str]:
        """``HOST:PORT`` of every supernode record the bootstrap node's directory returns
        (asked from the bootstrap host by a lookup-only session)."""
        assert self.lab is not None
        r = self.lab.run("boot", [sys.executable, "-c", _DIRECTORY, self.bootstrap_addr],
                         timeout=timeout, cwd=str(REPO))
        if r.returncode != 0:
            return []
        return list(json.loads(r.stdout))

    def wait_directory(self, hosts: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until the directory lists the supernodes on ``hosts``, so that clients
        started afterwards can choose among all of them."""
        want = {self.supernode_addr(h) for h in hosts}
        deadline = time.monotonic() + timeout
        while not want <= set(self.directory()):
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"supernodes {sorted(want)} not all in the directory "
                                     f"within {timeout}s: {self.directory()}")
            time.sleep(0.3)

    def stop_daemon(self, host: str, sig: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
        self.daemons[host].stop(sig, grace_s)

    def close(self) -> None:
        """Stop the daemons (clients first) and tear the lab down. Idempotent."""
        order = sorted(self.daemons.values(),
                       key=lambda d: {"client": 0, "supernode": 1, "bootstrap": 2}[d.role])
        for daemon in order:
            daemon.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for daemon in order:
            daemon.wait_or_kill(deadline - time.monotonic())
        if self.lab is not None:
            self.lab.close()

    # -- state ------------------------------------------------------------------------------

    def status(self, host: str, timeout: float = 5.0) -> dict[str, Any]:
        """The client's control ``status`` answer, ``{}`` when the socket does not answer."""
        try:
            return control_request(self.sock(host), {"cmd": "status"}, timeout=timeout)
        except (ControlSocketError, ValueError):
            return {}

    def control(self, host: str, obj: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return control_request(self.sock(host), obj, timeout=timeout)

    def check_alive(self) -> None:
        dead = [f"{d.name} ({d.role}) exited {d.proc.returncode}: {self.log_tail(d.name)}"
                for d in self.daemons.values() if d.exited() and d.proc is not None]
        if dead:
            raise AssertionError("daemons died:\n" + "\n".join(dead))

    def wait_attached(
        self, timeout: float = 60.0, lookups: bool = True
    ) -> dict[str, dict[str, Any]]:
        """Wait until every client's status says ``attached`` and its dial-back check has
        answered (``promotion.reachable``: whether others can dial it, which decides whether
        a dial gets TCP's head start, :func:`overlay.media.direct_paths.plan`); with
        ``lookups`` also until each client finds the next one (a ring over all clients) by a
        control ``lookup``, so the supernodes have published every presence record. Returns
        the statuses."""
        hosts = list(self.clients)
        statuses: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        pending = set(hosts)
        while pending:
            self.check_alive()
            for host in sorted(pending):
                s = self.status(host)
                if s.get("state") == "attached" \
                        and (s.get("promotion") or {}).get("reachable") is not None:
                    statuses[host] = s
                    pending.discard(host)
            if pending and time.monotonic() > deadline:
                raise AssertionError(
                    f"not attached and checked within {timeout}s: {sorted(pending)}; "
                    + "; ".join(f"{h}: {self.log_tail(h, 3)}" for h in sorted(pending)))
            if pending:
                time.sleep(0.2)
        if lookups and len(hosts) > 1:
            pending_pairs = {(a, hosts[(i + 1) % len(hosts)]) for i, a in enumerate(hosts)}
            while pending_pairs:
                for a, b in sorted(pending_pairs):
                    if self.finds(a, b):
                        pending_pairs.discard((a, b))
                if pending_pairs and time.monotonic() > deadline:
                    raise AssertionError(f"lookups still failing after {timeout}s: "
                                         f"{sorted(pending_pairs)}")
                if pending_pairs:
                    time.sleep(0.3)
        return statuses

    def finds(self, host: str, other: str) -> bool:
        """``host``'s client finds an online presence record of ``other``'s user."""
        try:
            answer = self.control(host, {"cmd": "lookup", "user": self.user(other)})
        except ControlSocketError:
            return False
        return bool(answer.get("ok")) and any(
            r.get("online", True) for r in answer.get("records", []))

    def attached_to(self, host: str) -> str | None:
        sn = (self.status(host).get("supernode") or {})
        return sn.get("address") or sn.get("host")

    def public_id(self, host: str) -> str | None:
        """A bootstrap node's or supernode's public key (hex), from its log."""
        for entry in self.log_lines(host, "public_id"):
            if isinstance(entry.get("public_id"), str):
                return str(entry["public_id"])
        return None

    def supernode_ids(self) -> dict[str, str | None]:
        return {sn: self.public_id(sn) for sn in self.supernode_hosts}

    def is_supernode_id(self, ident: object) -> bool:
        """``ident`` (a relay id as ``overlay send --json`` reports it: the node key in hex, or
        a prefix of it of at least 8 digits) names one of the supernodes."""
        if not isinstance(ident, str) or len(ident) < 8:
            return False
        return any(k is not None and k.startswith(ident.lower())
                   for k in self.supernode_ids().values())

    def log_text(self, host: str) -> str:
        try:
            return self.log_path(host).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, host: str, lines: int = 20) -> str:
        return "\n".join(self.log_text(host).splitlines()[-lines:])

    def log_lines(self, host: str, contains: str | Callable[[dict[str, Any]], bool],
                  since: float | None = None, until: float | None = None
                  ) -> list[dict[str, Any]]:
        """The host's JSON log lines whose text contains ``contains`` (or for which it is
        true), optionally only those logged within wall times [``since``, ``until``]."""
        out = []
        for line in self.log_text(host).splitlines():
            if isinstance(contains, str) and contains not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if callable(contains) and not contains(entry):
                continue
            t = _log_time(entry)
            if t is not None and ((since is not None and t < since)
                                  or (until is not None and t > until)):
                continue
            out.append(entry)
        return out

    # -- files ------------------------------------------------------------------------------

    def make_file(self, host: str, name: str, size: int) -> Path:
        """A file of ``size`` random bytes in ``host``'s outbox."""
        path = self.outbox(host) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
        return path

    def inbox_files(self, host: str) -> list[Path]:
        d = self.inbox(host)
        return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []

    def wait_inbox_file(self, host: str, name: str, timeout: float = 10.0) -> Path:
        """Wait until ``name`` is in ``host``'s inbox (renamed into place: complete)."""
        path = self.inbox(host) / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not in {host}'s inbox within {timeout}s "
                                     f"(inbox: {[p.name for p in self.inbox_files(host)]})")
            time.sleep(0.05)
        return path

    # -- overlay send -----------------------------------------------------------------------

    def send_argv(self, src: str, dst: str, file: Path, json_out: bool = True) -> list[str]:
        return [*OVERLAY, "send", self.user(dst), str(file), "--control", str(self.sock(src)),
                *(["--json"] if json_out else [])]

    def add_contact(self, host: str, other: str) -> None:
        """``host``'s client adds ``other``'s user as a contact (its key looked up and pinned),
        as a user would with ``overlay contacts add``: ``other``'s invites get answered."""
        answer = self.control(host, {"cmd": "contact_add", "user": self.user(other)})
        if not answer.get("ok"):
            raise AssertionError(f"{host}: contacts add {other}: {answer.get('error')}")

    def send(self, src: str, dst: str, file: Path, timeout: float = 120.0,
             json_out: bool = True) -> SendResult:
        """Run ``overlay send DST FILE --control SRC.sock --json`` in ``src``'s host, once
        ``dst`` has ``src`` as a contact."""
        assert self.lab is not None
        self.add_contact(dst, src)
        argv = self.send_argv(src, dst, file, json_out)
        started_at = time.time()
        t0 = time.monotonic()
        try:
            r = self.lab.run(src, argv, timeout=timeout, cwd=str(REPO))
            rc, out, err, timed_out = r.returncode, r.stdout, r.stderr, False
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) \
                else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) \
                else (exc.stderr or "")
            rc, timed_out = -9, True
        seconds = time.monotonic() - t0
        parsed: dict[str, Any] | None = None
        for line in reversed(out.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                parsed = value
                break
        return SendResult(src, dst, file, rc, out, err, seconds, started_at, parsed, timed_out)


def _log_time(entry: dict[str, Any]) -> float | None:
    ts = entry.get("timestamp") or entry.get("ts")
    if isinstance(ts, int | float):
        return float(ts)
    if isinstance(ts, str):
        from datetime import datetime
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return None


def run_exclusive(
    jobs: Sequence[tuple[tuple[str, ...], Callable[[], T]]], parallel: int
) -> list[T]:
    """Run ``jobs`` (``(resources, fn)``) on up to ``parallel`` threads such that no two
    running jobs share a resource (e.g. a client host); results in job order. Exceptions
    propagate after the running jobs have finished."""
    results: dict[int, T] = {}
    pending = list(range(len(jobs)))
    busy: set[str] = set()
    running: dict[Future[T], int] = {}
    lock = threading.Lock()
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        while pending or running:
            with lock:
                for i in list(pending):
                    if len(running) >= parallel or error is not None:
                        break
                    res, fn = jobs[i]
                    if busy.intersection(res):
                        continue
                    busy.update(res)
                    pending.remove(i)
                    running[pool.submit(fn)] = i
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                i = running.pop(fut)
                busy.difference_update(jobs[i][0])
                try:
                    results[i] = fut.result()
                except BaseException as exc:
                    error = error or exc
    if error is not None:
        raise error
    return [results[i] for i in range(len(jobs))]


def receiver_entry(ov: LabOverlay, dst: str, src: str, name: str) -> dict[str, Any]:
    """``dst``'s record (its ``status`` ``transfers``) of the file ``name`` it finished
    receiving from ``src`` (waited for, up to 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        for entry in reversed(ov.status(dst).get("transfers") or []):
            if entry.get("from") == ov.user(src) and entry.get("name") == name \
                    and entry.get("done_at"):
                return dict(entry)
        assert time.monotonic() < deadline, f"{dst} has no finished transfer {name}"
        time.sleep(0.2)
