"""The client daemon's control commands: ``status``, ``lookup``, ``supernodes``, ``send``
(those for contacts are in :mod:`overlay.client.contact_commands`).

The socket and its protocol are :mod:`overlay.client.control`; this module says what each
command does.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from overlay.attach.adapter import SessionError
from overlay.client.control import ControlError, ControlServer, JSONObject
from overlay.client.host_cache import HostCache
from overlay.core import records
from overlay.core.records import PresenceRecord, SignedRecord
from overlay.core.user_ref import parse_user_ref
from overlay.media.consent import ACCEPT_WAIT_S, MAX_ACCEPT_WAIT_S, NotAccepted, SendFailed
from overlay.media.service import MediaService

Lookup = Callable[[str], Awaitable[tuple[list[SignedRecord], str]]]


def record_json(signed: SignedRecord, now: float) -> JSONObject:
    rec = signed.record
    assert isinstance(rec, PresenceRecord)
    supernode = None
    if rec.online:
        host = f"[{rec.supernode_host}]" if ":" in rec.supernode_host else rec.supernode_host
        supernode = {
            "address": f"{host}:{rec.supernode_port}", "host": rec.supernode_host,
            "port": rec.supernode_port, "node_key": rec.supernode_key.hex(),
        }
    return {
        "user": rec.user, "device": rec.device, "public_key": rec.user_key.hex(),
        "online": rec.online and rec.expires_at > now, "supernode": supernode,
        "capabilities": list(rec.capabilities), "seq": rec.seq,
        "issued_at": rec.issued_at, "expires_at": rec.expires_at,
    }


class ClientCommands:
    """The handlers, over what the daemon hands them."""

    def __init__(self, status: Callable[[], JSONObject], lookup: Lookup, cache: HostCache,
                 media: MediaService) -> None:
        self._status = status
        self._lookup = lookup
        self.cache = cache
        self.media = media

    def register(self, control: ControlServer) -> None:
        control.register("status", self.status, help="attachment and backup")
        control.register("lookup", self.lookup, {"user": (str, True)},
                         "a user's verified presence records")
        control.register("supernodes", self.supernodes, help="the host cache")
        control.register("send", self.send, {"user": (str, True), "path": (str, True),
                                             "wait_s": ((int, float), False)},
                         "send a file to a user (NAME or NAME#KEYPREFIX), end-to-end "
                         "encrypted; wait_s: how long to wait for a contact request to be "
                         f"accepted (default {ACCEPT_WAIT_S:g}, at most "
                         f"{MAX_ACCEPT_WAIT_S:g})", timeout_s=float("inf"))

    async def status(self, args: JSONObject) -> JSONObject:
        return self._status()

    async def send(self, args: JSONObject) -> JSONObject:
        try:
            ref = parse_user_ref(str(args["user"]))
        except records.RecordError as exc:
            raise ControlError(str(exc)) from None
        wait_s = float(args.get("wait_s", ACCEPT_WAIT_S))
        try:
            return await self.media.send(ref, Path(str(args["path"])), wait_s)
        except NotAccepted as exc:
            raise ControlError(str(exc), reason="not_accepted") from None
        except SendFailed as exc:
            raise ControlError(str(exc)) from None

    async def lookup(self, args: JSONObject) -> JSONObject:
        user = args["user"]
        try:
            records.check_name(user)
        except records.RecordError as exc:
            raise ControlError(str(exc)) from None
        try:
            found, via = await self._lookup(user)
        except SessionError as exc:
            raise ControlError(f"lookup failed: {exc}") from None
        now = time.time()
        return {"user": user, "via": via, "records": [record_json(s, now) for s in found]}

    async def supernodes(self, args: JSONObject) -> JSONObject:
        return {"supernodes": [e.to_json() for e in self.cache.ordered()]}
