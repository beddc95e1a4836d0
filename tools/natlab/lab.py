"""Build a NAT lab in Linux network namespaces, run programs in it, and tear it down.

Layout (``P`` is the lab's prefix, e.g. ``nl3fa2``; ``n`` a host's 1-based index)::

    netns P-inet     bridge Pbr = the public segment 198.18.0.0/24, nothing routed here
    netns P-h-NAME   the host (always)
    netns P-r-NAME   the host's router (firewalled, cone, symmetric, tcp-only, mapping, cgnat;
                     a mapping router also runs portmapd.py, the PCP/NAT-PMP responder)
    netns P-c-NAME   the carrier router in front of a cgnat host's router

    public host:  P-h-NAME [Phn] ---- [Phnp] Pbr
    routed host:  P-h-NAME [Plnh] ---- [Pln] P-r-NAME [Pwn] ---- [Pwnp] Pbr
    cgnat host:   P-h-NAME [Plnh] ---- [Pln] P-r-NAME [Pcnh] ---- [Pcn] P-c-NAME [Pwn] ---- Pbr
    shared LAN:   P-h-NAME [Plnh] ---- [Plnp] bridge Plo (o: the owner's index) in P-r-OWNER,
                  one such port per host on the LAN (the owner's too)

Nothing is ever attached to the root namespace: the lab is an island, so nothing sent inside
it can reach any real network. Everything is deleted on ``close()`` (context manager exit),
at interpreter exit (``atexit``), and on SIGTERM/SIGHUP; ``cleanup(prefix)`` removes the
leftovers of a lab whose owner died without running any of those (e.g. SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Literal

from .rulesets import PORTMAP_TABLE, router_ruleset
from .topology import MAPPING_KINDS, HostSpec, Topology

NetemBackend = Literal["auto", "tc", "wire"]

PACKAGE_DIR = Path(__file__).resolve().parent
WIRE_SCRIPT = PACKAGE_DIR / "wire.py"
PROBE_SCRIPT = PACKAGE_DIR / "probe.py"
PORTMAPD_SCRIPT = PACKAGE_DIR / "portmapd.py"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
STATE_DIR = Path(os.environ.get("NATLAB_STATE_DIR", "/run/natlab"))
IP_TIMEOUT_S = 30.0
#: in a router whose LAN is a bridge: bridged frames skip its nftables (if br_netfilter is
#: loaded at all: then the sysctl exists)
_NO_BRIDGE_NF = ("f=/proc/sys/net/bridge/bridge-nf-call-iptables; "
                 "if [ -e $f ]; then echo 0 > $f; fi")


class LabError(RuntimeError):
    """Setting up or using the lab failed."""


# --------------------------------------------------------------------------- helpers


def _cmd(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = IP_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed") from exc
    if check and proc.returncode != 0:
        shown = " ".join(argv)
        if input:
            shown += f" <<EOF\n{input}EOF"
        raise LabError(f"command failed ({proc.returncode}): {shown}\n{proc.stderr.strip()}")
    return proc


def _in_ns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def probe_argv(*args: str) -> list[str]:
    """argv to run the bundled probe program (``tools/natlab/probe.py``) with ``args``."""
    return [sys.executable, str(PROBE_SCRIPT), *args]


def list_netns() -> list[str]:
    """Names of all network namespaces registered under /run/netns."""
    out = _cmd(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    out = _cmd(["ip", "netns", "pids", netns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _root_links() -> list[str]:
    out = _cmd(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _link_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}(br|p[ab]|[hwlc]\d+[ph]?)$")


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _state_file(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def lab_owner_alive(prefix: str) -> bool | None:
    """True/False if the lab's owning process is (not) alive, None if there is no state file."""
    try:
        state = json.loads(_state_file(prefix).read_text())
        pid, start_time = int(state["pid"]), str(state["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _proc_start_time(pid) == start_time


def list_labs() -> dict[str, list[str]]:
    """Prefixes of labs that have namespaces or a state file, with their namespaces."""
    labs: dict[str, list[str]] = {}
    for name in list_netns():
        prefix, sep, rest = name.partition("-")
        if sep and PREFIX_RE.match(prefix) and (rest == "inet"
                                                or rest[:2] in ("h-", "r-", "c-")):
            labs.setdefault(prefix, []).append(name)
    if STATE_DIR.is_dir():
        for path in STATE_DIR.glob("*.json"):
            if PREFIX_RE.match(path.stem):
                labs.setdefault(path.stem, [])
    return labs


def _kill_pids(pids: Sequence[int], grace_s: float) -> None:
    me = os.getpid()
    pids = [pid for pid in pids if pid != me]
    if not pids:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cleanup(prefix: str, *, grace_s: float = 0.5) -> list[str]:
    """Delete everything of the lab with this prefix: its processes, namespaces and links.

    Idempotent and never raises for things that are already gone. Returns what it removed.
    """
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"not a lab prefix: {prefix!r}")
    removed: list[str] = []
    namespaces = [
        name
        for name in list_netns()
        if name == f"{prefix}-inet"
        or name.startswith((f"{prefix}-h-", f"{prefix}-r-", f"{prefix}-c-"))
    ]
    pids = sorted({pid for ns in namespaces for pid in netns_pids(ns)})
    _kill_pids(pids, grace_s)
    # Wait for killed processes to leave the namespaces (a zombie is no longer in one).
    deadline = time.monotonic() + 5.0
    for ns in namespaces:
        while netns_pids(ns) and time.monotonic() < deadline:
            _kill_pids(netns_pids(ns), 0.0)
            time.sleep(0.02)
        if _cmd(["ip", "netns", "del", ns], check=False).returncode == 0:
            removed.append(f"netns {ns}")
    # Our links only ever live inside our namespaces; this catches a half-failed creation.
    pattern = _link_re(prefix)
    for link in _root_links():
        if pattern.match(link) and _cmd(["ip", "link", "del", link], check=False).returncode == 0:
            removed.append(f"link {link}")
    with contextlib.suppress(OSError):
        _state_file(prefix).unlink()
    return removed


_NETEM_SUPPORTED: bool | None = None


def _probe_tc_netem(netns: str, prefix: str) -> bool:
    global _NETEM_SUPPORTED
    if _NETEM_SUPPORTED is None:
        a, b = f"{prefix}pa", f"{prefix}pb"
        _cmd(["ip", "-n", netns, "link", "add", a, "type", "veth", "peer", "name", b])
        try:
            qdisc = _in_ns(netns, "tc", "qdisc", "add", "dev", a, "root", "netem", "delay", "1ms")
            res = _cmd(qdisc, check=False)
            _NETEM_SUPPORTED = res.returncode == 0
        finally:
            _cmd(["ip", "-n", netns, "link", "del", a], check=False)
    return _NETEM_SUPPORTED


# ------------------------------------------------------------- teardown on exit/signals

_LIVE: set[Lab] = set()
_LIVE_LOCK = threading.RLock()
_HANDLERS_INSTALLED = False
_PREV_HANDLERS: dict[int, Any] = {}
_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _teardown_all() -> None:
    with _LIVE_LOCK:
        labs = [lab for lab in _LIVE if lab._owner_pid == os.getpid()]
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.close()


def _on_exit_signal(signum: int, frame: FrameType | None) -> None:
    _teardown_all()
    prev = _PREV_HANDLERS.get(signum)
    if callable(prev):
        prev(signum, frame)
        return
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    with _LIVE_LOCK:
        if _HANDLERS_INSTALLED:
            return
        _HANDLERS_INSTALLED = True
        atexit.register(_teardown_all)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still works
        for sig in _EXIT_SIGNALS:
            prev = signal.getsignal(sig)
            if prev is signal.SIG_IGN:
                continue  # e.g. under nohup: keep ignoring
            _PREV_HANDLERS[sig] = prev
            signal.signal(sig, _on_exit_signal)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back while tearing down, so teardown is never cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------------------ process wrapper


class LabProcess:
    """A process started in the lab with text pipes, and line reading with timeouts."""

    def __init__(self, popen: subprocess.Popen[str], label: str) -> None:
        self.popen = popen
        self.label = label
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._threads: list[threading.Thread] = []
        if popen.stdout is not None:
            self._start(self._pump_stdout, popen.stdout)
        if popen.stderr is not None:
            self._start(self._pump_stderr, popen.stderr)

    def _start(self, target: Any, stream: IO[str]) -> None:
        thread = threading.Thread(target=target, args=(stream,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump_stdout(self, stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _pump_stderr(self, stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self._stderr.append(line)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stderr_text(self) -> str:
        return "".join(self._stderr)

    def read_line(self, timeout: float) -> str:
        """The next line of stdout; TimeoutError if none comes in time, EOFError at the end."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.label}: no output line within {timeout}s") from None
        if line is None:
            self._lines.put(None)
            raise EOFError(
                f"{self.label}: exited ({self.popen.poll()}) without more output; "
                f"stderr: {self.stderr_text.strip()[-2000:]}"
            )
        return line

    def read_json(self, timeout: float) -> Any:
        """The next stdout line that parses as JSON (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            try:
                return json.loads(line)
            except ValueError:
                continue

    def write_line(self, text: str) -> None:
        if self.popen.stdin is None:
            raise LabError(f"{self.label}: started without stdin=PIPE")
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def terminate(self, timeout: float = 2.0) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout``; returns the exit code."""
        _signal_group(self.popen, signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen, signal.SIGKILL)
            return self.popen.wait()


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)  # lab processes get their own session, so pgid == pid
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


# ------------------------------------------------------------------------------ lab


class Lab:
    """A NAT lab built from a topology. Use as ``with Lab(topology) as lab: ...``."""

    def __init__(
        self,
        topology: Topology | Mapping[str, Any],
        *,
        prefix: str | None = None,
        netem_backend: NetemBackend | None = None,
        grace_s: float = 1.0,
    ) -> None:
        self.topology = topology if isinstance(topology, Topology) else Topology.from_dict(topology)
        if prefix is not None and not PREFIX_RE.match(prefix):
            raise ValueError(f"prefix must match {PREFIX_RE.pattern}, got {prefix!r}")
        self._requested_prefix = prefix
        self.prefix = prefix or ""
        backend = netem_backend or os.environ.get("NATLAB_NETEM_BACKEND", "auto")
        if backend not in ("auto", "tc", "wire"):
            raise ValueError(f"netem_backend must be auto, tc or wire, got {backend!r}")
        self._netem_choice: str = backend
        self.netem_backend: Literal["tc", "wire"] | None = None  # what was used, if any
        self.grace_s = grace_s
        self._owner_pid = os.getpid()
        self._procs: list[subprocess.Popen[Any]] = []
        self._infra: list[subprocess.Popen[Any]] = []
        self._portmapds: dict[str, LabProcess] = {}
        self._claimed = False  # True once self.prefix is ours to clean up
        self._started = False
        self._closed = False
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Build the whole topology. On any failure (or interrupt) everything is torn down."""
        with self._lock:
            if self._started:
                raise LabError("lab already started")
            self._started = True
        _install_handlers()
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._claim_prefix()
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill every process of the lab and delete its namespaces. Idempotent, never raises."""
        with _signals_deferred(), self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                procs = self._procs + self._infra
                for proc in procs:
                    _signal_group(proc, signal.SIGTERM)
                deadline = time.monotonic() + self.grace_s
                for proc in procs:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(max(0.0, deadline - time.monotonic()))
                for proc in procs:
                    _signal_group(proc, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5.0)
                if self._claimed:  # never clean up a prefix that belongs to another lab
                    cleanup(self.prefix, grace_s=0.2)
            except Exception as exc:  # teardown must not raise; report and go on
                print(f"natlab: teardown of {self.prefix} incomplete: {exc}", file=sys.stderr)
            finally:
                with _LIVE_LOCK:
                    _LIVE.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _claim_prefix(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        existing = set(list_labs())
        for _ in range(100):
            prefix = self._requested_prefix or f"nl{secrets.token_hex(2)}"
            if prefix in existing:
                if self._requested_prefix:
                    raise LabError(f"prefix {prefix} is in use (python -m tools.natlab cleanup)")
                continue
            state = {
                "prefix": prefix,
                "pid": os.getpid(),
                "start_time": _proc_start_time(os.getpid()),
                "created": time.time(),
                "hosts": {h.name: h.kind for h in self.topology.hosts},
            }
            # Write a private file, then link it into place: the state file appears complete
            # (never empty, which would look ownerless to "cleanup --stale"), and atomically
            # fails if another lab claimed the prefix first.
            tmp = STATE_DIR / f".{prefix}.{os.getpid()}.{secrets.token_hex(4)}"
            tmp.write_text(json.dumps(state))
            try:
                os.link(tmp, _state_file(prefix))
            except FileExistsError:
                if self._requested_prefix:
                    raise LabError(f"prefix {prefix} is in use") from None
                continue
            finally:
                tmp.unlink()
            self.prefix = prefix
            self._claimed = True
            return
        raise LabError("could not find a free lab prefix")

    # ----------------------------------------------------------------- naming

    @property
    def inet_netns(self) -> str:
        """The namespace holding the public segment's bridge."""
        return f"{self.prefix}-inet"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def netns(self, host: str, *, router: bool = False, carrier: bool = False) -> str:
        """The namespace of ``host``, of its router (the one on its LAN, maybe shared with
        other hosts), or of its carrier router (``cgnat``)."""
        spec = self._owner(self.topology.host(host)) if router or carrier else \
            self.topology.host(host)
        if carrier:
            if not spec.carrier:
                raise LabError(f"host {host!r} ({spec.kind}) has no carrier router")
            return f"{self.prefix}-c-{spec.name}"
        if router:
            if not spec.routed:
                raise LabError(f"host {host!r} ({spec.kind}) has no router")
            return f"{self.prefix}-r-{spec.name}"
        return f"{self.prefix}-h-{spec.name}"

    def _owner(self, spec: HostSpec) -> HostSpec:
        """The host whose router ``spec`` sits behind (``spec`` itself unless it shares one)."""
        return self.topology.host(spec.router_host) if spec.router_host else spec

    def _uplink(self, spec: HostSpec) -> tuple[str, str, str]:
        """(namespace, inner ifname, bridge-side ifname) of the link to the bridge of the
        host, or of the router it sits behind (``cgnat``: of the carrier router)."""
        spec = self._owner(spec)
        if spec.routed:
            name = f"{self.prefix}w{spec.index}"
            ns = self.netns(spec.name, carrier=spec.carrier, router=not spec.carrier)
            return ns, name, name + "p"
        name = f"{self.prefix}h{spec.index}"
        return self.netns(spec.name), name, name + "p"

    def _carrier_link(self, spec: HostSpec) -> tuple[str, str]:
        """(carrier-side, home-router-side) ifnames of a ``cgnat`` host's link between its two
        routers."""
        name = f"{self.prefix}c{self._owner(spec).index}"
        return name, name + "h"

    def _router_wan(self, spec: HostSpec) -> str:
        """The WAN ifname of the router on the host's LAN."""
        owner = self._owner(spec)
        return self._carrier_link(owner)[1] if owner.carrier else self._uplink(owner)[1]

    def _lan(self, spec: HostSpec) -> tuple[str, str]:
        """(router-side, host-side) ifnames of a routed host's LAN link. On a shared LAN the
        router side is a port of the LAN's bridge, ``_lan_bridge``."""
        name = f"{self.prefix}l{spec.index}"
        return (name + "p" if self._shared_lan(spec) else name), name + "h"

    def _shared_lan(self, spec: HostSpec) -> bool:
        owner = self._owner(spec)
        return bool(self.topology.lan_members(owner.name))

    def _lan_iface(self, spec: HostSpec) -> str:
        """The router's LAN interface (a veth, or the bridge of a shared LAN)."""
        owner = self._owner(spec)
        return f"{self.prefix}l{owner.index}" if self._shared_lan(owner) else self._lan(owner)[0]

    def iface(self, host: str, *, router: bool = False, lan: bool = False,
              carrier: bool = False) -> str:
        """Interface names: the host's own, its router's WAN (``lan=True``: LAN) interface, or
        (``carrier=True``) its carrier router's WAN interface."""
        spec = self.topology.host(host)
        if carrier:
            self.netns(host, carrier=True)  # raises for a host without one
            return self._uplink(spec)[1]
        if router or lan:
            if not spec.routed:
                raise LabError(f"host {host!r} ({spec.kind}) has no router")
            return self._lan_iface(spec) if lan else self._router_wan(spec)
        return self._lan(spec)[1] if spec.routed else self._uplink(spec)[1]

    # -------------------------------------------------------------- addresses

    @property
    def hosts(self) -> list[str]:
        return self.topology.names

    def kind(self, host: str) -> str:
        return self.topology.host(host).kind

    def public_ip(self, host: str) -> str:
        """The host's own public address (public, firewalled) or its router's WAN address."""
        return self.topology.host(host).public_ip

    def host_ip(self, host: str) -> str:
        """The address configured inside the host."""
        return self.topology.host(host).host_ip

    def router_wan_ip(self, host: str) -> str | None:
        return self.topology.host(host).router_wan_ip

    def router_lan_ip(self, host: str) -> str | None:
        return self.topology.host(host).router_lan_ip

    def ruleset(self, host: str, *, carrier: bool = False) -> str:
        """The nftables ruleset loaded into the host's router (or its carrier router)."""
        spec = self.topology.host(host)
        if carrier:
            self.netns(host, carrier=True)  # raises for a host without one
            return router_ruleset(spec.kind, self._uplink(spec)[1], self._carrier_link(spec)[0])
        if not spec.routed:
            raise LabError(f"host {host!r} ({spec.kind}) has no router")
        return router_ruleset(spec.kind, self._router_wan(spec), self._lan_iface(spec))

    def describe(self) -> dict[str, Any]:
        """Everything about the lab as plain data (for printing or JSON)."""
        hosts: dict[str, Any] = {}
        for spec in self.topology.hosts:
            entry: dict[str, Any] = {
                "kind": spec.kind,
                "netns": self.netns(spec.name),
                "iface": self.iface(spec.name),
                "host_ip": spec.host_ip,
                "public_ip": spec.public_ip,
            }
            if spec.routed:
                entry["router_netns"] = self.netns(spec.name, router=True)
                entry["router_wan_ip"] = spec.router_wan_ip
                entry["router_lan_ip"] = spec.router_lan_ip
            if spec.router_host:
                entry["router_host"] = spec.router_host
            if spec.carrier:
                entry["carrier_netns"] = self.netns(spec.name, carrier=True)
                entry["carrier_lan_ip"] = spec.carrier_lan_ip
            if spec.kind in MAPPING_KINDS:
                entry["max_lifetime_s"] = spec.max_lifetime_s
                entry["methods"] = list(spec.portmap_methods)
            if spec.netem:
                entry["netem"] = {
                    "delay_ms": spec.netem.delay_ms,
                    "jitter_ms": spec.netem.jitter_ms,
                    "loss_pct": spec.netem.loss_pct,
                }
            hosts[spec.name] = entry
        return {
            "prefix": self.prefix,
            "inet_netns": self.inet_netns,
            "bridge": self.bridge,
            "netem_backend": self.netem_backend,
            "hosts": hosts,
        }

    # ---------------------------------------------------------------- running

    def exec_argv(self, host: str, argv: Sequence[str], *, router: bool = False,
                  carrier: bool = False) -> list[str]:
        """argv that runs ``argv`` inside the host's (or its router's, or carrier router's)
        namespace."""
        return ["ip", "netns", "exec", self.netns(host, router=router, carrier=carrier), *argv]

    def popen(
        self, host: str, argv: Sequence[str], *, router: bool = False, carrier: bool = False,
        **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` in the host (``router=True``: its router; ``carrier=True``: its
        carrier router). Killed on teardown.

        Takes ``subprocess.Popen`` keyword arguments; ``start_new_session`` defaults to True so
        that teardown can kill the whole process group.
        """
        if self._closed or not self._started:
            raise LabError("lab is not running")
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            self.exec_argv(host, argv, router=router, carrier=carrier), **kwargs
        )
        self._procs.append(proc)
        return proc

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        *,
        router: bool = False,
        carrier: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> LabProcess:
        """``popen`` with text pipes for stdin/stdout/stderr, wrapped for line reading."""
        proc = self.popen(
            host,
            argv,
            router=router,
            carrier=carrier,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        where = "/carrier" if carrier else "/router" if router else ""
        return LabProcess(proc, f"{host}{where}: {' '.join(argv)}")

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        router: bool = False,
        carrier: bool = False,
        check: bool = False,
        input: str | bytes | None = None,
        capture_output: bool = True,
        text: bool = True,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the host to completion, like ``subprocess.run``.

        On timeout the process group is killed and ``subprocess.TimeoutExpired`` raised.
        """
        if capture_output:
            kwargs.setdefault("stdout", subprocess.PIPE)
            kwargs.setdefault("stderr", subprocess.PIPE)
        if input is not None:
            kwargs["stdin"] = subprocess.PIPE
        proc = self.popen(host, argv, router=router, carrier=carrier, text=text, **kwargs)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.communicate()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._procs.remove(proc)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    # ------------------------------------------------------------------ build

    def _build(self) -> None:
        specs = self.topology.hosts
        routed = [s for s in specs if s.owns_router]  # one entry per router (pair, for cgnat)
        netem_specs = [s for s in specs if s.netem is not None]

        # 1. namespaces, with sysctls that must be set before any interface exists in them
        namespaces = [self.inet_netns]
        routers = {self.netns(s.name, router=True) for s in routed}
        routers |= {self.netns(s.name, carrier=True) for s in routed if s.carrier}
        for spec in specs:
            if spec.owns_router:
                namespaces.append(self.netns(spec.name, router=True))
            if spec.owns_router and spec.carrier:
                namespaces.append(self.netns(spec.name, carrier=True))
            namespaces.append(self.netns(spec.name))
        for ns in namespaces:
            _cmd(["ip", "netns", "add", ns])
        base = [
            "net.ipv6.conf.default.disable_ipv6=1",  # keep ::1 on lo, but no IPv6 on the links
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]
        self._parallel(
            [
                _in_ns(ns, "sysctl", "-qw", *base, f"net.ipv4.ip_forward={int(ns in routers)}")
                for ns in namespaces
            ]
        )

        # 2. netem backend (only decided if some link needs it)
        use_wire = False
        if netem_specs:
            if self._netem_choice == "wire":
                use_wire = True
            else:
                use_wire = not _probe_tc_netem(self.inet_netns, self.prefix)
                if use_wire and self._netem_choice == "tc":
                    raise LabError(
                        "tc netem is not available on this kernel (built without sch_netem); "
                        "use netem_backend='auto' or 'wire' (userspace link emulation)"
                    )
            self.netem_backend = "wire" if use_wire else "tc"

        # 3. links, created directly inside their namespaces (never in the root namespace)
        root_batch: list[str] = []
        taps: dict[str, list[str]] = {}
        for spec in specs:
            ns, inner, outer = self._uplink(spec)
            if spec.router_host is not None:
                pass  # its uplink is its router's owner's
            elif use_wire and spec.netem is not None:
                taps.setdefault(ns, []).append(inner)
                taps.setdefault(self.inet_netns, []).append(outer)
            else:
                root_batch.append(
                    f"link add {inner} netns {ns} type veth peer name {outer} "
                    f"netns {self.inet_netns}"
                )
            if spec.owns_router and spec.carrier:
                cside, hside = self._carrier_link(spec)
                root_batch.append(
                    f"link add {cside} netns {self.netns(spec.name, carrier=True)} type veth "
                    f"peer name {hside} netns {self.netns(spec.name, router=True)}"
                )
            if spec.routed:
                lan, lan_host = self._lan(spec)
                root_batch.append(
                    f"link add {lan} netns {self.netns(spec.name, router=True)} type veth "
                    f"peer name {lan_host} netns {self.netns(spec.name)}"
                )
        _cmd(["ip", "-batch", "-"], input="\n".join(root_batch) + "\n")
        for ns, names in taps.items():
            batch = "".join(f"tuntap add dev {name} mode tap\n" for name in names)
            _cmd(["ip", "-n", ns, "-batch", "-"], input=batch)

        # 4. addresses, routes, bridge
        batches: dict[str, list[str]] = {ns: ["link set lo up"] for ns in namespaces}
        inet = batches[self.inet_netns]
        inet += [f"link add {self.bridge} type bridge", f"link set {self.bridge} up"]
        for spec in specs:
            ns, inner, outer = self._uplink(spec)
            if spec.router_host is None:
                inet += [f"link set {outer} master {self.bridge}", f"link set {outer} up"]
            if not spec.routed:
                batches[ns] += [f"addr add {spec.public_ip}/24 dev {inner}", f"link set {inner} up"]
                continue
            lan, lan_host = self._lan(spec)
            host_ns = self.netns(spec.name)
            rns = self.netns(spec.name, router=True)
            gw = spec.router_lan_ip
            if spec.owns_router:  # first: it creates a shared LAN's bridge
                batches[rns] += self._router_wan_setup(spec)
            if self._shared_lan(spec):  # the LAN is a bridge (a switch) in the router
                batches[rns] += [f"link set {lan} master {self._lan_iface(spec)}",
                                 f"link set {lan} up"]
            else:
                batches[rns] += [f"addr add {gw}/24 dev {lan}", f"link set {lan} up"]
            if spec.owns_router and spec.carrier:
                cside, _ = self._carrier_link(spec)
                batches[ns] += [
                    f"addr add {spec.public_ip}/24 dev {inner}",
                    f"link set {inner} up",
                    f"addr add {spec.carrier_lan_ip}/24 dev {cside}",
                    f"link set {cside} up",
                ]
            if spec.kind == "firewalled":
                # The host keeps its public address; the router routes it to the LAN and
                # answers ARP for it on the WAN side (proxy_arp, set below).
                batches[ns].append(f"route add {spec.public_ip}/32 dev {lan}")
                batches[host_ns] += [
                    f"addr add {spec.host_ip}/32 dev {lan_host}",
                    f"link set {lan_host} up",
                    f"route add {gw}/32 dev {lan_host} scope link",
                    f"route add default via {gw} dev {lan_host}",
                ]
            else:
                batches[host_ns] += [
                    f"addr add {spec.host_ip}/24 dev {lan_host}",
                    f"link set {lan_host} up",
                    f"route add default via {gw} dev {lan_host}",
                ]
        # the bridge first, so that its ports can be enslaved
        _cmd(["ip", "-n", self.inet_netns, "-batch", "-"], input="\n".join(inet) + "\n")
        self._parallel(
            [["ip", "-n", ns, "-batch", "-"] for ns in namespaces if ns != self.inet_netns],
            inputs=["\n".join(batches[ns]) + "\n" for ns in namespaces if ns != self.inet_netns],
        )

        # 5. router sysctls that need the interfaces, and the nftables rulesets
        router_cmds: list[list[str]] = []
        router_inputs: list[str | None] = []
        for spec in routed:
            rns, wan, _ = self._uplink(spec)
            if spec.carrier:
                router_cmds.append(_in_ns(rns, "nft", "-f", "-"))
                router_inputs.append(self.ruleset(spec.name, carrier=True))
                rns = self.netns(spec.name, router=True)
            if self._shared_lan(spec):
                # a LAN switch does not pass frames between its ports through the router's
                # firewall (br_netfilter would, if loaded)
                router_cmds.append(_in_ns(rns, "sh", "-c", _NO_BRIDGE_NF))
                router_inputs.append(None)
            if spec.kind == "firewalled":
                router_cmds.append(_in_ns(rns, "sysctl", "-qw", f"net.ipv4.conf.{wan}.proxy_arp=1"))
                # Linux delays proxy ARP replies by up to 0.8 s; a real router answers at once
                router_cmds.append(
                    _in_ns(rns, "sysctl", "-qw", f"net.ipv4.neigh.{wan}.proxy_delay=0"))
                router_inputs.append(None)
                router_inputs.append(None)
            router_cmds.append(_in_ns(rns, "nft", "-f", "-"))
            router_inputs.append(self.ruleset(spec.name))
        self._parallel(router_cmds, inputs=router_inputs)
        for spec in routed:
            if spec.kind in MAPPING_KINDS:
                self._start_portmapd(spec)

        # 6. link impairments
        for spec in netem_specs:
            assert spec.netem is not None
            ns, inner, outer = self._uplink(spec)
            if use_wire:
                self._start_wire(spec, ns, inner, outer)
            else:
                netem = ["netem", "delay", f"{spec.netem.delay_ms}ms"]
                if spec.netem.jitter_ms:
                    netem.append(f"{spec.netem.jitter_ms}ms")
                if spec.netem.loss_pct:
                    netem += ["loss", f"{spec.netem.loss_pct}%"]
                self._parallel(
                    [
                        _in_ns(ns, "tc", "qdisc", "add", "dev", inner, "root", *netem),
                        _in_ns(self.inet_netns, "tc", "qdisc", "add", "dev", outer, "root", *netem),
                    ]
                )

    def _router_wan_setup(self, spec: HostSpec) -> list[str]:
        """``ip -batch`` lines for the WAN side (and LAN bridge) of the router ``spec`` owns."""
        lines: list[str] = []
        if self._shared_lan(spec):
            bridge = self._lan_iface(spec)
            lines += [f"link add {bridge} type bridge", f"link set {bridge} up",
                      f"addr add {spec.router_lan_ip}/24 dev {bridge}"]
        if spec.carrier:
            _, hside = self._carrier_link(spec)
            # towards the lab's addresses only: a non-lab destination stays unreachable
            return [*lines, f"addr add {spec.router_wan_ip}/24 dev {hside}",
                    f"link set {hside} up",
                    f"route add 198.18.0.0/15 via {spec.carrier_lan_ip} dev {hside}"]
        _, inner, _ = self._uplink(spec)
        return [*lines, f"addr add {spec.router_wan_ip}/24 dev {inner}", f"link set {inner} up"]

    def _start_portmapd(self, spec: HostSpec) -> None:
        """The PCP/NAT-PMP responder of a ``mapping`` router, on its LAN address."""
        rns, wan, _ = self._uplink(spec)
        assert spec.router_lan_ip and spec.lan_net and spec.router_wan_ip
        argv = [
            "ip", "netns", "exec", rns, sys.executable, str(PORTMAPD_SCRIPT),
            "--listen", spec.router_lan_ip, "--lan-net", spec.lan_net,
            "--wan-if", wan, "--wan-ip", spec.router_wan_ip, "--table", PORTMAP_TABLE,
            "--max-lifetime", str(spec.max_lifetime_s),
            "--methods", ",".join(spec.portmap_methods),
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, bufsize=1, start_new_session=True,
        )  # fmt: skip
        self._infra.append(proc)
        wrapped = LabProcess(proc, f"portmapd for {spec.name}")
        try:
            ready = wrapped.read_json(10.0)
        except (TimeoutError, EOFError) as exc:
            raise LabError(f"port-mapping responder for {spec.name} did not start: {exc}"
                           ) from exc
        if not isinstance(ready, dict) or ready.get("event") != "ready":
            raise LabError(f"port-mapping responder for {spec.name}: unexpected {ready!r}")
        self._portmapds[spec.name] = wrapped

    def portmapd(self, host: str) -> LabProcess:
        """The PCP/NAT-PMP responder on ``host``'s router (kind ``mapping``): its JSON event
        lines (``map``, ``renew``, ``delete``, ``expire``, ``refused``) via ``read_json``."""
        try:
            return self._portmapds[host]
        except KeyError:
            raise LabError(f"host {host!r} ({self.kind(host)}) grants no mappings") from None

    def _start_wire(self, spec: HostSpec, ns: str, inner: str, outer: str) -> None:
        assert spec.netem is not None
        argv = [
            "ip", "netns", "exec", self.inet_netns, sys.executable, str(WIRE_SCRIPT),
            "--a", f"{self.inet_netns}:{outer}",
            "--b", f"{ns}:{inner}",
            "--delay-ms", str(spec.netem.delay_ms),
            "--jitter-ms", str(spec.netem.jitter_ms),
            "--loss-pct", str(spec.netem.loss_pct),
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._infra.append(proc)
        wrapped = LabProcess(proc, f"wire for {spec.name}")
        try:
            line = wrapped.read_line(10.0)
        except (TimeoutError, EOFError) as exc:
            raise LabError(f"link emulator for {spec.name} did not start: {exc}") from exc
        if line != "ready":
            raise LabError(f"link emulator for {spec.name}: unexpected output {line!r}")

    @staticmethod
    def _parallel(
        commands: Sequence[Sequence[str]], inputs: Sequence[str | None] | None = None
    ) -> None:
        """Run independent commands concurrently; raise LabError if any failed."""
        procs = []
        for i, argv in enumerate(commands):
            data = inputs[i] if inputs is not None else None
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append((argv, data, proc))
        errors = []
        for argv, data, proc in procs:
            try:
                _out, err = proc.communicate(data, timeout=IP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                errors.append(f"timed out: {' '.join(argv)}")
                continue
            if proc.returncode != 0:
                shown = " ".join(argv) + (f" <<EOF\n{data}EOF" if data else "")
                errors.append(f"command failed ({proc.returncode}): {shown}\n{err.strip()}")
        if errors:
            raise LabError("\n".join(errors))
