"""The inbox: signals for the user (other than media invites) as one JSON file each."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path

from overlay.attach import SignalDelivery
from overlay.core.files import write_private_json


def store_signal(inbox: Path, msg: SignalDelivery) -> str:
    """Write ``msg`` into ``inbox`` as a new JSON file (mode 0600); return its name.

    Raises ``OSError`` when it cannot be written."""
    item = {
        "from_user": msg.from_user, "from_device": msg.from_device,
        "from_key": msg.from_key.hex(),
        "payload": base64.b64encode(msg.payload).decode(), "received_at": time.time(),
    }
    name = f"{time.time_ns()}-{secrets.token_hex(4)}.json"
    write_private_json(inbox / name, item, prefix=".in.")
    return name
