"""Small network probes to run inside lab hosts (standard library only, runs as a script).

Every command prints JSON lines on stdout. Servers print ``{"event": "ready", "port": P}``
once they are bound, so callers can wait for that line instead of sleeping.

    probe.py udp-reflector [--port P]      echo back {"seen": [ip, port]} to every datagram
    probe.py tcp-server [--port P]         send {"seen": [ip, port]} to every connection
    probe.py tcp-connect HOST PORT         connect, print {"ok": ..., "seen": ...}
    probe.py udp-query HOST:PORT...        from one socket ask reflectors for the mapped address
    probe.py udp-send HOST PORT            fire datagrams, expect nothing
    probe.py udp-ping HOST PORT            sequential ping-pong with a reflector, print RTTs
    probe.py udp-burst HOST PORT           send N numbered datagrams, count the echoes
    probe.py punch --reflector HOST:PORT   UDP hole punching (reads the peer "IP PORT" on stdin)
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from typing import Any

Addr = tuple[str, int]


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def parse_hostport(text: str) -> Addr:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def udp_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    return sock


def recv_until(sock: socket.socket, deadline: float) -> tuple[bytes, Addr] | None:
    """One datagram, or None when the deadline passes."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            data, addr = sock.recvfrom(65536)
            return data, (addr[0], addr[1])


# ------------------------------------------------------------------------ servers


def cmd_udp_reflector(args: argparse.Namespace) -> int:
    sock = udp_socket(args.port)
    emit({"event": "ready", "port": sock.getsockname()[1]})
    while True:
        data, addr = sock.recvfrom(65536)
        text = data.decode(errors="replace")
        emit({"event": "recv", "from": list(addr), "data": text})
        sock.sendto(json.dumps({"seen": list(addr), "data": text}).encode(), addr)


def cmd_tcp_server(args: argparse.Namespace) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", args.port))
    srv.listen(16)
    emit({"event": "ready", "port": srv.getsockname()[1]})
    while True:
        conn, addr = srv.accept()
        with conn:
            emit({"event": "accept", "from": list(addr)})
            conn.sendall((json.dumps({"seen": list(addr)}) + "\n").encode())


# ------------------------------------------------------------------------ clients


def cmd_tcp_connect(args: argparse.Namespace) -> int:
    start = time.monotonic()
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as conn:
            local = conn.getsockname()
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
    except (OSError, ValueError) as exc:
        emit({"ok": False, "error": f"{type(exc).__name__}: {exc}",
              "elapsed": time.monotonic() - start})  # fmt: skip
        return 1
    emit({"ok": True, "seen": reply["seen"], "local": list(local),
          "elapsed": time.monotonic() - start})  # fmt: skip
    return 0


def query(sock: socket.socket, server: Addr, timeout: float, tries: int) -> Addr | None:
    """Ask a reflector which address it sees us at; None if it never answers."""
    for _ in range(tries):
        sock.sendto(b"whoami", server)
        deadline = time.monotonic() + timeout / tries
        while (got := recv_until(sock, deadline)) is not None:
            data, addr = got
            if addr == server:
                seen = json.loads(data)["seen"]
                return seen[0], int(seen[1])
    return None


def cmd_udp_query(args: argparse.Namespace) -> int:
    sock = udp_socket(args.bind)
    results = []
    for server in args.servers:
        seen = query(sock, server, args.timeout, args.tries)
        results.append({"server": list(server), "seen": list(seen) if seen else None})
    emit({"local_port": sock.getsockname()[1], "results": results})
    return 0 if all(r["seen"] for r in results) else 1


def cmd_udp_send(args: argparse.Namespace) -> int:
    sock = udp_socket()
    for i in range(args.count):
        sock.sendto(f"{args.payload}:{i}".encode(), (args.host, args.port))
        time.sleep(args.interval)
    emit({"sent": args.count, "local_port": sock.getsockname()[1]})
    return 0


def cmd_udp_ping(args: argparse.Namespace) -> int:
    sock = udp_socket()
    server = (args.host, args.port)
    rtts: list[float] = []
    lost = 0
    for i in range(args.count):
        payload = f"ping:{i}".encode()
        sent = time.monotonic()
        sock.sendto(payload, server)
        deadline = sent + args.timeout
        while (got := recv_until(sock, deadline)) is not None:
            data, addr = got
            if addr == server and json.loads(data).get("data") == payload.decode():
                rtts.append((time.monotonic() - sent) * 1000)
                break
        else:
            lost += 1
    emit({"rtts_ms": rtts, "lost": lost})
    return 0 if rtts else 1


def cmd_udp_burst(args: argparse.Namespace) -> int:
    sock = udp_socket()
    server = (args.host, args.port)
    got_back: set[str] = set()
    # Warm up until one echo comes back: with loss on the link, ARP can be lost too, and a
    # lost ARP request is only retried after a second.
    warm_deadline = time.monotonic() + args.warmup
    warmed = args.warmup <= 0
    while not warmed and time.monotonic() < warm_deadline:
        sock.sendto(b"warmup", server)
        got = recv_until(sock, min(warm_deadline, time.monotonic() + 0.2))
        warmed = got is not None and got[1] == server
    while recv_until(sock, time.monotonic() + 0.05) is not None:
        pass  # late warm-up echoes
    for i in range(args.count):
        sock.sendto(f"burst:{i}".encode(), server)
        time.sleep(args.interval)
    deadline = time.monotonic() + args.wait
    while (got := recv_until(sock, deadline)) is not None:
        data, addr = got
        if addr == server:
            got_back.add(json.loads(data).get("data", ""))
    got_back.discard("warmup")
    emit({"sent": args.count, "received": len(got_back), "warmed_up": warmed})
    return 0


def cmd_punch(args: argparse.Namespace) -> int:
    """UDP hole punching as a NAT-traversing peer does it.

    1. learn our reflexive address from a reflector and print it;
    2. read the peer's reflexive address ("IP PORT") from stdin;
    3. send to it every ``--interval`` s while listening; whatever arrives from a non-reflector
       address is the peer: remember its actual source address and keep sending there for
       ``--linger`` s so that the peer's side completes too;
    4. print {"ok": true, "peer_seen": [ip, port]} or {"ok": false} after ``--timeout`` s.
    """
    sock = udp_socket()
    reflector: Addr = args.reflector
    mapped = query(sock, reflector, 3.0, 6)
    emit({"event": "reflexive", "addr": list(mapped) if mapped else None,
          "local_port": sock.getsockname()[1]})  # fmt: skip
    line = sys.stdin.readline().split()
    if len(line) != 2:
        emit({"ok": False, "error": "no peer address on stdin"})
        return 2
    target: Addr = (line[0], int(line[1]))
    start = time.monotonic()
    deadline = start + args.timeout
    peer_seen: Addr | None = None
    success_at = 0.0
    next_send = start
    received = 0
    while True:
        now = time.monotonic()
        if peer_seen is not None and now >= success_at + args.linger:
            break
        if peer_seen is None and now >= deadline:
            break
        if now >= next_send:
            kind = b"ack" if peer_seen else b"punch"
            sock.sendto(kind, target)
            next_send = now + args.interval
        got = recv_until(sock, min(next_send, deadline if peer_seen is None else now + 1.0))
        if got is None:
            continue
        data, addr = got
        if addr == reflector or data not in (b"punch", b"ack"):
            continue
        received += 1
        if peer_seen is None:
            peer_seen = addr
            success_at = time.monotonic()
            target = addr  # answer where it really came from
            next_send = 0.0
    emit({
        "ok": peer_seen is not None,
        "peer_seen": list(peer_seen) if peer_seen else None,
        "announced": [line[0], int(line[1])],
        "received": received,
        "elapsed": (success_at or time.monotonic()) - start,
    })  # fmt: skip
    return 0 if peer_seen else 1


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="natlab network probes")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("udp-reflector")
    p.add_argument("--port", type=int, default=0)
    p.set_defaults(func=cmd_udp_reflector)

    p = sub.add_parser("tcp-server")
    p.add_argument("--port", type=int, default=0)
    p.set_defaults(func=cmd_tcp_server)

    p = sub.add_parser("tcp-connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_tcp_connect)

    p = sub.add_parser("udp-query")
    p.add_argument("servers", type=parse_hostport, nargs="+")
    p.add_argument("--bind", type=int, default=0)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--tries", type=int, default=4)
    p.set_defaults(func=cmd_udp_query)

    p = sub.add_parser("udp-send")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--payload", default="hello")
    p.set_defaults(func=cmd_udp_send)

    p = sub.add_parser("udp-ping")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=cmd_udp_ping)

    p = sub.add_parser("udp-burst")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.002)
    p.add_argument("--wait", type=float, default=1.0)
    p.add_argument("--warmup", type=float, default=5.0, help="max seconds to wait for 1 echo")
    p.set_defaults(func=cmd_udp_burst)

    p = sub.add_parser("punch")
    p.add_argument("--reflector", type=parse_hostport, required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--linger", type=float, default=0.5)
    p.set_defaults(func=cmd_punch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
