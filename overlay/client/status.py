"""The client daemon's status, as the ``status`` control command and ``overlay demo`` show it."""

from __future__ import annotations

import os
import time

from overlay.client.control import JSONObject
from overlay.client.links import Links
from overlay.client.options import ClientOptions
from overlay.core.identity import Identity


def status_json(
    *,
    opts: ClientOptions,
    identity: Identity,
    links: Links,
    stopping: bool,
    started_at: float,
    failovers: int,
    known_supernodes: int,
    promotion: dict[str, object],
    transfers: list[JSONObject],
    sending: list[JSONObject],
    port_mapping: JSONObject | None = None,
    connectivity: JSONObject | None = None,
) -> JSONObject:
    """Attachment (with presence and reflexive address), backup, and the daemon's counters."""
    att = links.live_primary()
    backup = links.live_backup()
    supernode: JSONObject | None = None
    reflexive: JSONObject | None = None
    if att is not None:
        supernode = att.to_json()
        if att.ok is not None:
            supernode["heartbeat_s"] = att.ok.heartbeat_s
            ok = att.ok
            host = f"[{ok.reflexive_host}]" if ":" in ok.reflexive_host else ok.reflexive_host
            reflexive = {"address": f"{host}:{ok.reflexive_port}",
                         "host": ok.reflexive_host, "port": ok.reflexive_port}
        if att.presence is not None:
            supernode["presence_seq"] = att.presence.seq
            supernode["presence_expires_at"] = att.presence.expires_at
    state = "stopping" if stopping else "attached" if att else "connecting"
    return {
        "user": opts.user, "device": opts.device,
        "public_key": identity.public_id, "state": state,
        "supernode": supernode, "backup": backup.to_json() if backup else None,
        "reflexive": reflexive,
        "uptime_s": round(time.time() - started_at, 3),
        "failovers": failovers, "known_supernodes": known_supernodes,
        "may_become_supernode": opts.may_become_supernode, "pid": os.getpid(),
        "promotion": promotion,
        "transfers": transfers,
        "sending": sending,
        #: the router's mappings of our media ports (PCP/NAT-PMP), None when not asked for
        "port_mapping": port_mapping,
        #: path races per pair of NAT classes and kind of attempt (media.connect_stats)
        "connectivity": connectivity,
    }
