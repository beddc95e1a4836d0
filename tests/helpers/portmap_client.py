"""Keep one port mapping from the default gateway, as a client would, and print JSON lines.

``python -m tests.helpers.portmap_client --protocol tcp --port P`` (inside a lab host) asks
the gateway (``/proc/net/route``) for a mapping of ``P`` with
:class:`overlay.media.portmap_io.PortMapping` and prints ``{"event": "mapped", ...}``,
``{"event": "renewed", ...}``, ``{"event": "unavailable" | "lost", "reason"}``; a line
``close`` on stdin deletes the mapping and prints ``{"event": "deleted", "confirmed"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from overlay.media.portmap import Deleted, Event, Lost, Mapped, Unavailable
from overlay.media.portmap_io import PortMapping, default_gateway


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def main(protocol: str, port: int, gateway: str | None) -> int:
    gateway = gateway or default_gateway()
    if gateway is None:
        emit("unavailable", reason="no default gateway")
        return 1
    assert protocol in ("tcp", "udp")
    mapping = await PortMapping.open(gateway, "tcp" if protocol == "tcp" else "udp", port)

    def on_event(event: Event) -> None:
        if isinstance(event, Mapped):
            m = event.mapping
            emit("renewed" if event.renewed else "mapped", method=m.method,
                 external=[m.external_ip, m.external_port], lifetime=m.lifetime,
                 seconds=mapping.time_to_map, gateway=gateway)
        elif isinstance(event, Unavailable | Lost):
            emit("unavailable" if isinstance(event, Unavailable) else "lost",
                 reason=event.reason)
        elif isinstance(event, Deleted):
            emit("deleted", confirmed=event.confirmed)

    mapping.on_event = on_event
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "close":
            break
    await mapping.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=("tcp", "udp"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gateway")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.protocol, args.port, args.gateway)))
