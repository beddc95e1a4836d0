"""A small PCP (RFC 6887) and NAT-PMP (RFC 6886) server for the lab's ``mapping`` routers.

Runs in the router's namespace, listens on its LAN address, port 5351, and for every mapping
it grants installs real nftables rules in the router's ``ip natlab_portmap`` table (created
empty by :mod:`tools.natlab.rulesets`): a DNAT rule (WAN address and external port to the
host's internal address and port) and an SNAT rule (the same internal address and port go out
from the external port, so the mapping also holds for what the host sends: RFC 6887's mappings
are endpoint independent). The router's forward chain accepts what was DNATed
(``ct status dnat``). Mappings expire after their lifetime (capped by ``--max-lifetime``) and
are removed with their rules; on SIGTERM every rule goes.

Only what RFC 6887 MAP and RFC 6886 need: PCP MAP and ANNOUNCE (no options, no PEER, no
third party), NAT-PMP external address and map; only hosts of the LAN, only TCP and UDP, one
internal port per mapping. A PCP mapping belongs to its nonce (a renewal or delete with
another nonce is ``NOT_AUTHORIZED``). Debian's ``miniupnpd-nftables`` would do this but
refuses to map when its external address is in 198.18.0.0/15, the lab's range.

With ``--methods`` including ``upnp`` it is also a UPnP Internet Gateway Device
(:mod:`igd`: SSDP on port 1900, HTTP on port 5000); without ``pcp`` and ``nat-pmp`` nothing
listens on port 5351 (an IGD-only router).

Standard library only. Prints JSON lines: ``{"event": "ready", "port": 5351}`` once bound,
then ``map``, ``renew``, ``delete``, ``expire`` and ``refused`` events.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from igd import Igd  # type: ignore[import-not-found,unused-ignore]  # run as a script

PORT = 5351
PROTOCOLS = {6: "tcp", 17: "udp"}
PMP_OPS = {1: "udp", 2: "tcp"}
# PCP result codes
SUCCESS, UNSUPP_VERSION, NOT_AUTHORIZED, MALFORMED_REQUEST, UNSUPP_OPCODE = 0, 1, 2, 3, 4
NETWORK_FAILURE, UNSUPP_PROTOCOL, ADDRESS_MISMATCH = 7, 9, 12
# NAT-PMP result codes
PMP_NOT_AUTHORIZED, PMP_NETWORK_FAILURE, PMP_UNSUPPORTED_OPCODE = 2, 3, 5
ERROR_LIFETIME = 30
EXTERNAL_RANGE = (20000, 60000)


@dataclass
class Grant:
    protocol: str
    internal_ip: str
    internal_port: int
    external_port: int
    expires_at: float
    nonce: bytes | None  # PCP's mapping nonce; None for NAT-PMP

    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.internal_ip, self.internal_port)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def ip16(ip: str) -> bytes:
    return bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(ip).packed


def ip_from16(raw: bytes) -> str | None:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else None


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.lan_ip: str = args.listen
        self.lan_net = ipaddress.ip_network(args.lan_net)
        self.wan_if: str = args.wan_if
        self.wan_ip: str = args.wan_ip
        self.table: str = args.table
        self.max_lifetime: int = args.max_lifetime
        self.nft: bool = not args.no_nft
        methods = set(args.methods.split(","))
        if not methods or not methods <= {"pcp", "nat-pmp", "upnp"}:
            raise SystemExit(f"--methods: a comma list of pcp, nat-pmp, upnp: {args.methods}")
        self.pcp_enabled: bool = "pcp" in methods and not args.nat_pmp_only
        self.started = time.monotonic()
        self.grants: dict[tuple[str, str, int], Grant] = {}
        self.sock: socket.socket | None = None
        if methods & {"pcp", "nat-pmp"}:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((self.lan_ip, PORT))
        self.igd = Igd(self) if "upnp" in methods else None
        self.methods = sorted(methods)

    # -- nftables ------------------------------------------------------------------------

    def render(self) -> str:
        t = f"ip {self.table}"
        lines = [f"flush chain {t} prerouting", f"flush chain {t} postrouting"]
        for g in self.grants.values():
            tag = f'comment "portmap {g.protocol} {g.internal_ip}:{g.internal_port}"'
            lines.append(
                f'add rule {t} prerouting iifname "{self.wan_if}" ip daddr {self.wan_ip} '
                f"{g.protocol} dport {g.external_port} "
                f"dnat to {g.internal_ip}:{g.internal_port} {tag}")
            lines.append(
                f'add rule {t} postrouting oifname "{self.wan_if}" ip saddr {g.internal_ip} '
                f"{g.protocol} sport {g.internal_port} "
                f"snat to {self.wan_ip}:{g.external_port} {tag}")
        return "\n".join(lines) + "\n"

    def apply(self) -> bool:
        if not self.nft:
            return True
        proc = subprocess.run(["nft", "-f", "-"], input=self.render(), text=True,
                              capture_output=True, check=False)
        if proc.returncode != 0:
            emit("nft_failed", error=proc.stderr.strip()[-500:])
        return proc.returncode == 0

    # -- mappings ------------------------------------------------------------------------

    def epoch(self) -> int:
        return int(time.monotonic() - self.started)

    def allocate(self, protocol: str, suggested: int, internal_port: int,
                 key: tuple[str, str, int]) -> int:
        held = self.grants.get(key)
        if held is not None:
            return held.external_port
        used = {g.external_port for g in self.grants.values() if g.protocol == protocol}
        for port in (suggested, internal_port):
            if 1024 <= port <= 65535 and port not in used:
                return port
        while True:
            port = random.randint(*EXTERNAL_RANGE)
            if port not in used:
                return port

    def grant(self, protocol: str, ip: str, internal_port: int, suggested: int,
              lifetime: int, nonce: bytes | None, via: str) -> Grant | None:
        key = (protocol, ip, internal_port)
        lifetime = min(lifetime, self.max_lifetime)
        renewal = key in self.grants
        port = self.allocate(protocol, suggested, internal_port, key)
        g = Grant(protocol, ip, internal_port, port, time.monotonic() + lifetime, nonce)
        previous = self.grants.get(key)
        self.grants[key] = g
        if not renewal and not self.apply():
            if previous is None:
                del self.grants[key]
            return None
        emit("renew" if renewal else "map", via=via, protocol=protocol,
             internal=f"{ip}:{internal_port}", external=f"{self.wan_ip}:{port}",
             lifetime=lifetime)
        return g

    def refused(self, via: str, client: str, result: int) -> None:
        emit("refused", via=via, client=client, result=result)

    def delete(self, key: tuple[str, str, int], via: str, event: str = "delete") -> None:
        g = self.grants.pop(key, None)
        if g is None:
            return
        self.apply()
        emit(event, via=via, protocol=g.protocol, internal=f"{g.internal_ip}:{g.internal_port}",
             external=f"{self.wan_ip}:{g.external_port}")

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, g in self.grants.items() if g.expires_at <= now]:
            self.delete(key, "timer", "expire")

    def next_expiry(self) -> float | None:
        return min((g.expires_at for g in self.grants.values()), default=None)

    # -- PCP -----------------------------------------------------------------------------

    def pcp(self, data: bytes, src: str) -> bytes | None:
        if len(data) < 24 or data[1] & 0x80:
            return None  # too short to answer, or a response
        opcode = data[1] & 0x7F
        payload = data[24:60] if opcode == 1 else b""

        def answer(result: int, lifetime: int, body: bytes) -> bytes:
            return struct.pack("!BBBBII12x", 2, 0x80 | opcode, 0, result, lifetime,
                               self.epoch()) + body

        if data[0] != 2:
            return answer(UNSUPP_VERSION, ERROR_LIFETIME, b"")
        if len(data) > 1100 or len(data) % 4:
            return answer(MALFORMED_REQUEST, ERROR_LIFETIME, b"")
        if opcode == 0:
            return answer(SUCCESS, 0, b"")
        if opcode != 1:
            return answer(UNSUPP_OPCODE, ERROR_LIFETIME, b"")
        if len(data) < 60:
            return answer(MALFORMED_REQUEST, ERROR_LIFETIME, b"")
        (lifetime,) = struct.unpack_from("!I", data, 4)
        client = ip_from16(data[8:24])
        nonce = data[24:36]
        proto_num, internal_port, suggested = struct.unpack_from("!B3xHH", data, 36)

        def refuse(result: int) -> bytes:
            emit("refused", via="pcp", client=src, result=result)
            return answer(result, ERROR_LIFETIME, payload)

        if client != src:
            return refuse(ADDRESS_MISMATCH)
        if ipaddress.ip_address(src) not in self.lan_net:
            return refuse(NOT_AUTHORIZED)
        if proto_num not in PROTOCOLS:
            return refuse(UNSUPP_PROTOCOL)
        if internal_port == 0:
            return refuse(MALFORMED_REQUEST)
        protocol = PROTOCOLS[proto_num]
        key = (protocol, src, internal_port)
        held = self.grants.get(key)
        if held is not None and held.nonce != nonce:
            return refuse(NOT_AUTHORIZED)
        if lifetime == 0:
            self.delete(key, "pcp")
            return answer(SUCCESS, 0, payload)
        g = self.grant(protocol, src, internal_port, suggested, lifetime, nonce, "pcp")
        if g is None:
            return refuse(NETWORK_FAILURE)
        body = (nonce + struct.pack("!B3xHH", proto_num, internal_port, g.external_port)
                + ip16(self.wan_ip))
        return answer(SUCCESS, min(lifetime, self.max_lifetime), body)

    # -- NAT-PMP -------------------------------------------------------------------------

    def pmp(self, data: bytes, src: str) -> bytes | None:
        if len(data) < 2 or data[1] >= 128:
            return None
        op = data[1]
        if op == 0 and len(data) == 2:
            return struct.pack("!BBHI", 0, 128, 0, self.epoch()) \
                + ipaddress.IPv4Address(self.wan_ip).packed
        if op not in PMP_OPS or len(data) != 12:
            return struct.pack("!BBHI", 0, 128 + op, PMP_UNSUPPORTED_OPCODE, self.epoch())
        internal_port, suggested, lifetime = struct.unpack_from("!HHI", data, 4)
        protocol = PMP_OPS[op]

        def reply(result: int, external: int, granted: int) -> bytes:
            return struct.pack("!BBHIHHI", 0, 128 + op, result, self.epoch(), internal_port,
                               external, granted)

        if ipaddress.ip_address(src) not in self.lan_net:
            emit("refused", via="nat-pmp", client=src, result=PMP_NOT_AUTHORIZED)
            return reply(PMP_NOT_AUTHORIZED, 0, 0)
        if lifetime == 0:
            keys = [k for k in self.grants if k[0] == protocol and k[1] == src
                    and (internal_port == 0 or k[2] == internal_port)]
            for key in keys:
                self.delete(key, "nat-pmp")
            return reply(0, 0, 0)
        if internal_port == 0:
            return reply(PMP_UNSUPPORTED_OPCODE, 0, 0)
        g = self.grant(protocol, src, internal_port, suggested, lifetime, None, "nat-pmp")
        if g is None:
            return reply(PMP_NETWORK_FAILURE, 0, 0)
        return reply(0, g.external_port, min(lifetime, self.max_lifetime))

    # -- loop ----------------------------------------------------------------------------

    def on_datagram(self) -> None:
        assert self.sock is not None
        try:
            data, (src, port) = self.sock.recvfrom(2048)
        except OSError:
            return
        out = self.handle(data, src)
        if out is not None:
            self.sock.sendto(out, (src, port))

    def handle(self, data: bytes, src: str) -> bytes | None:
        if not data:
            return None
        if data[0] == 0:
            return self.pmp(data, src)
        if not self.pcp_enabled:  # a NAT-PMP-only router: "unsupported version" (RFC 6886 3.5)
            if len(data) < 2 or data[1] >= 128:
                return None
            return struct.pack("!BBHI", 0, 128 + data[1], 1, self.epoch())
        return self.pcp(data, src)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (:class:`Stop`), then remove every rule."""
        sel = selectors.DefaultSelector()
        if self.sock is not None:
            sel.register(self.sock, selectors.EVENT_READ, self.on_datagram)
        if self.igd is not None:
            sel.register(self.igd.ssdp, selectors.EVENT_READ, self.igd.on_ssdp)
            sel.register(self.igd.http, selectors.EVENT_READ, self.igd.on_http)
        emit("ready", port=PORT, listen=self.lan_ip, external=self.wan_ip,
             max_lifetime=self.max_lifetime, methods=self.methods)
        try:
            while True:
                expiry = self.next_expiry()
                timeout = None if expiry is None else max(0.0, expiry - time.monotonic())
                for key, _ in sel.select(timeout):
                    key.data()
                self.expire()
        except Stop:
            pass
        self.grants.clear()
        self.apply()
        emit("stopped")


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="the router's LAN address")
    parser.add_argument("--lan-net", required=True, help="the LAN, e.g. 198.19.3.0/24")
    parser.add_argument("--wan-if", required=True)
    parser.add_argument("--wan-ip", required=True)
    parser.add_argument("--table", default="natlab_portmap")
    parser.add_argument("--max-lifetime", type=int, default=3600)
    parser.add_argument("--methods", default="pcp,nat-pmp",
                        help="what the router speaks: a comma list of pcp, nat-pmp, upnp")
    parser.add_argument("--nat-pmp-only", action="store_true",
                        help="answer PCP requests as a NAT-PMP-only router does")
    parser.add_argument("--no-nft", action="store_true",
                        help="grant mappings without installing rules (tests on loopback)")
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one Stop; the clean-up runs to its end
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Stop

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Server(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
