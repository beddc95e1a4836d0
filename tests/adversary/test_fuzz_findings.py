"""Hostile input the fuzzers (tests/fuzz, ``python -m tools.fuzz``) found accepted, attacked.

The attacker ("mallory") has her own key and the documented wire formats only. msgpack
floats may be NaN: every comparison with NaN is false, so a NaN time passed every lifetime,
skew and expiry check.

* (a) over raw UDP, mallory ``store``s at a real ``overlay bootstrap`` process a name claim
  for "victim" signed by her own key whose issued_at and expires_at are NaN: a record that
  never expires, holding the name for ever. The node must refuse it (``malformed``) and
  ``find_value`` must not return it.
* (b) an invite whose issued_at is NaN passed the freshness check at any time, so a captured
  offer could be replayed for ever.
* (c) a supernode record with NaN coordinates was accepted (Vivaldi distances to it are NaN,
  which sorts anywhere).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import time
from typing import Any

import msgpack
import pytest

from overlay.core import records
from overlay.core.identity import Identity, node_id_for
from overlay.dht.envelope import ANY_RECIPIENT, Flags, Kind, new_msg_id, open_datagram, seal
from overlay.media import transfer
from overlay.media.signalling import SignallingError, open_offer
from overlay.media.stream import TcpByteStream
from tests.fuzz import seeds
from tests.helpers.daemons import Daemon, daemon_env, overlay_argv, wait_ready
from tests.helpers.netutil import loopback_ips, wait_for
from tests.helpers.node_keys import key_args, production_identity
from tests.helpers.repo import REPO

NAN = math.nan


def signed_body(identity: Identity, body: list[Any]) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True)
    wire: bytes = msgpack.packb([raw, identity.sign(records.SIGNING_DOMAIN + raw)],
                                use_bin_type=True)
    return wire


def ask(mallory: Identity, node: tuple[str, int], method: str, args: list[Any]) -> Any:
    """One signed DHT request over a raw UDP socket bound to 127.x; the node's answer.

    As the documented envelope requires, the node's id is learnt first (a ``ping`` to any
    recipient), and a truncated answer is asked for again with its cookie."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((node[0], 0))
        sock.settimeout(5.0)

        def request(payload: list[Any], recipient: bytes) -> Any:
            msg_id = new_msg_id()
            sock.sendto(seal(mallory, Kind.REQUEST, msg_id, Flags.CLIENT, payload,
                             recipient=recipient), node)
            while True:
                data, _ = sock.recvfrom(65536)
                env = open_datagram(data)
                if env.msg_id == msg_id:
                    return env

        node_id = node_id_for(request(["ping", []], ANY_RECIPIENT).sender_key)
        answer = request([method, args], node_id).payload
        if isinstance(answer, dict) and answer.get("truncated"):
            answer = request([method, args, answer["cookie"]], node_id).payload
        return answer


async def test_a_node_refuses_a_name_claim_with_nan_times(tmp_path):
    ip = loopback_ips(1)[0]
    boot = Daemon(["bootstrap", "--listen", f"{ip}:4000", "--http", f"{ip}:8080",
                   *key_args(tmp_path, "boot")], tmp_path / "boot.log").start()
    try:
        await wait_ready(f"{ip}:8080", boot)
        # a node key whose id solves the id puzzle: stores from any other sender are refused
        mallory = production_identity()
        claim = signed_body(mallory, [records.FORMAT_VERSION, int(records.RecordKind.NAME_CLAIM),
                                      "victim", mallory.public_key, 1, NAN, NAN])
        key = records.user_key("victim")
        stored = await asyncio.to_thread(ask, mallory, (ip, 4000), "store", [key, claim])
        held = await asyncio.to_thread(ask, mallory, (ip, 4000), "find_value", [key])
        assert (stored, held["values"]) == ({"ok": False, "reason": "malformed"}, [])
    finally:
        boot.stop()


def test_an_offer_with_a_nan_time_is_not_fresh_for_ever():
    body = list(seeds.OFFER_BODIES[0])
    body[8] = NAN
    with pytest.raises(SignallingError):
        open_offer(seeds.resign_offer(body), now=seeds.NOW + 10**6)


@pytest.mark.parametrize("coord", [NAN, math.inf, -math.inf])
def test_a_supernode_record_with_non_finite_coordinates_is_refused(coord):
    body = list(seeds.RECORD_BODIES[2])
    body[9] = [1.0, coord]
    with pytest.raises(records.MalformedRecord):
        records.verify(signed_body(seeds.NODE, body), now=seeds.NOW)


async def test_a_port_in_other_digits_is_reported_as_not_host_port():
    """(d) ``str.isdigit`` accepts "²", which ``int`` refuses: parse_hostport raised a bare
    ValueError instead of AddressError, and the CLI lost its message."""
    proc = await asyncio.create_subprocess_exec(
        *overlay_argv(["lookup", "alice", "--bootstrap", "127.0.0.1:²"], log_json=False),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=daemon_env(),
        cwd=str(REPO))
    _, err = await proc.communicate()
    assert (proc.returncode, "is not HOST:PORT" in err.decode()) == (2, True), err.decode()


async def test_a_node_refuses_a_name_with_a_trailing_newline(tmp_path):
    """(e) the name patterns ended in ``$``, which also matches before a final newline:
    "victim\\n", a different name that prints like "victim", was a valid name."""
    ip = loopback_ips(1)[0]
    boot = Daemon(["bootstrap", "--listen", f"{ip}:4000", "--http", f"{ip}:8080",
                   *key_args(tmp_path, "boot")], tmp_path / "boot.log").start()
    try:
        await wait_ready(f"{ip}:8080", boot)
        # a node key whose id solves the id puzzle: stores from any other sender are refused
        mallory = production_identity()
        claim = signed_body(mallory, [records.FORMAT_VERSION, int(records.RecordKind.NAME_CLAIM),
                                      "victim\n", mallory.public_key, 1, time.time(),
                                      time.time() + 86400.0])
        key = records.user_key("victim\n")
        stored = await asyncio.to_thread(ask, mallory, (ip, 4000), "store", [key, claim])
        assert stored == {"ok": False, "reason": "malformed"}
    finally:
        boot.stop()


async def test_a_received_file_name_with_a_trailing_newline_is_refused(tmp_path):
    """(f) the sender names the file "notes.txt\\n" in a HEADER frame sent over TCP: the
    receiver must refuse it, not write a file whose name ends in a newline."""
    inbox = tmp_path / "inbox"
    outcome: list[BaseException | None] = []

    async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await transfer.receive_file(TcpByteStream(reader, writer), inbox)
            outcome.append(None)
        except transfer.TransferError as exc:
            outcome.append(exc)
        finally:
            writer.close()

    ip = loopback_ips(1)[0]
    server = await asyncio.start_server(receiver, ip, 0)
    try:
        reader, writer = await asyncio.open_connection(ip, server.sockets[0].getsockname()[1])
        body = b"hello\n"
        header = {"name": "notes.txt\n", "size": len(body),
                  "sha256": hashlib.sha256(body).hexdigest(), "id": "ab" * 16}
        writer.write(transfer.frame(transfer.HEADER, msgpack.packb(header))
                     + transfer.frame(transfer.DATA, body) + transfer.frame(transfer.END, b""))
        await writer.drain()
        await reader.read()  # the receiver answers and closes
        writer.close()
        await wait_for(lambda: bool(outcome))
    finally:
        server.close()
    written = sorted(p.name for p in inbox.iterdir()) if inbox.exists() else []
    assert (written, isinstance(outcome[0], transfer.TransferError)) == ([], True)
