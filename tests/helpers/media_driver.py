"""Small programs for the media transport tests, and an in-test binding responder.

``python -m tests.helpers.media_driver reflector [--host H] [--port P]``
    A UDP binding responder built from the DHT envelope functions (what a supernode's
    ``"binding"`` method answers). Prints ``{"event": "ready", "port": P, "key": HEX}``.

``python -m tests.helpers.media_driver peer --host IP --reflector IP:PORT:KEYHEX [...]``
    One client's media socket. Prints ``{"event": "candidates", ...}`` (NAT type, local and
    mapped addresses), then reads one JSON line on stdin: ``{"remote": [[ip, port], ...],
    "session": HEX, "secret": HEX, "transcript": HEX, "initiator": bool, "send": N,
    "punch_timeout": S}``; punches (``{"event": "punched"|"punch_failed", ...}``), runs QUIC
    and ``secure()`` on the punched path, sends N random bytes (or receives until the end),
    and prints ``{"event": "done", "sha256": ..., "bytes": ..., "transfer_s": ...}``.

Candidates travel through the test process (stdin/stdout), never through the lab network.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from typing import Any

from overlay.core.identity import Identity, node_id_for
from overlay.dht.envelope import EnvelopeError, Flags, Kind, open_datagram, seal


class BindingResponder(asyncio.DatagramProtocol):
    """Answers ``["binding", []]`` requests with the source address, like a supernode."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        #: test hooks: answer with another key / not at all / this long after the request
        self.silent = False
        self.delay_s = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.silent or self.transport is None:
            return
        try:
            env = open_datagram(data)
        except EnvelopeError:
            return
        if env.kind is not Kind.REQUEST or env.payload != ["binding", []]:
            return
        reply = seal(self.identity, Kind.RESPONSE, env.msg_id, Flags.NONE,
                     {"host": addr[0], "port": addr[1]},
                     recipient=node_id_for(env.sender_key))
        if self.delay_s > 0:
            asyncio.get_running_loop().call_later(self.delay_s, self.transport.sendto, reply,
                                                  addr)
        else:
            self.transport.sendto(reply, addr)
        self.answered += 1

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_responder(host: str, port: int = 0,
                          identity: Identity | None = None) -> BindingResponder:
    loop = asyncio.get_running_loop()
    responder = BindingResponder(identity or Identity.generate())
    await loop.create_datagram_endpoint(lambda: responder, local_addr=(host, port))
    return responder


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def reflector(host: str, port: int) -> None:
    responder = await start_responder(host, port)
    emit(event="ready", port=responder.port, key=responder.identity.public_key.hex())
    await asyncio.Event().wait()  # until the lab stops it


async def peer(host: str, reflectors: list[str], congestion_control: str) -> None:
    from overlay.media.binding import nat_type
    from overlay.media.media_socket import MediaSocket
    from overlay.media.punch import PunchFailed, punch_key
    from overlay.media.punch_io import punch
    from overlay.media.quic.connect import quic_connect
    from overlay.media.secure_stream import secure

    identity = Identity.generate()
    media = await MediaSocket.open(host, 0)
    servers = []
    for item in reflectors:
        ip, port, key = item.split(":")
        servers.append(((ip, int(port)), bytes.fromhex(key)))
    report = await nat_type(media, identity, servers, timeout=1.5)
    emit(event="candidates", nat=report.nat, local=list(report.local),
         mapped=[list(m) if m else None for m in report.mapped],
         candidates=[list(c) for c in report.candidates], elapsed=round(report.elapsed, 3))
    line = await read_line()
    if not line.strip():
        return
    order = json.loads(line)
    remote = [(str(h), int(p)) for h, p in order["remote"]]
    session = bytes.fromhex(order["session"])
    secret = bytes.fromhex(order["secret"])
    transcript = bytes.fromhex(order["transcript"])
    initiator = bool(order["initiator"])
    started = time.monotonic()
    started_wall = time.time()
    try:
        addr = await punch(media, session, punch_key(secret, transcript), initiator,
                           report.candidates, remote, float(order.get("punch_timeout", 5.0)))
    except PunchFailed as exc:
        emit(event="punch_failed", elapsed=round(time.monotonic() - started, 3), error=str(exc))
        return
    punched = time.monotonic()
    puncher = media.puncher(session)
    emit(event="punched", peer=list(addr), elapsed=round(punched - started, 3),
         started_at=started_wall, punched_at=time.time(),
         probes=puncher.probes_sent if puncher else None,
         verified={f"{h}:{p}": how
                   for (h, p), how in (puncher.verified if puncher else {}).items()},
         learned=[list(a) for a in (puncher.learned if puncher else [])])
    raw = await quic_connect(media, addr, initiator=initiator, timeout=10.0,
                             session_id=session, congestion_control=congestion_control)
    stream = await secure(raw, secret, transcript, initiator, 10.0)
    connected = time.monotonic()
    digest = hashlib.sha256()
    count = 0
    size = int(order.get("send", 0))
    if size:
        data = os.urandom(size)
        digest.update(data)
        count = size
        await stream.send(data)
        await stream.close()
    else:
        while chunk := await stream.recv(65536):
            digest.update(chunk)
            count += len(chunk)
        await stream.close()
    done = time.monotonic()
    emit(event="done", sha256=digest.hexdigest(), bytes=count,
         connect_s=round(connected - punched, 3), transfer_s=round(done - connected, 3),
         stats=dict(media.stats))
    await media.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="media_driver")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reflector")
    r.add_argument("--host", default="0.0.0.0")
    r.add_argument("--port", type=int, default=0)
    p = sub.add_parser("peer")
    p.add_argument("--host", required=True)
    p.add_argument("--reflector", action="append", default=[])
    p.add_argument("--congestion-control", default="overlay-bbr")
    args = parser.parse_args()
    if args.cmd == "reflector":
        asyncio.run(reflector(args.host, args.port))
    else:
        asyncio.run(peer(args.host, args.reflector, args.congestion_control))


if __name__ == "__main__":
    main()
