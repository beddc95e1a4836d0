"""The inbox: signals for the user (other than media invites) as one JSON file each, within
the inbox quota (:mod:`overlay.media.inbox_limits`): a stranger cannot fill the disk."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

from overlay.attach import SignalDelivery
from overlay.core.files import write_private
from overlay.media.inbox_limits import InboxLimits, check_room


def store_signal(inbox: Path, msg: SignalDelivery, limits: InboxLimits | None = None) -> str:
    """Write ``msg`` into ``inbox`` as a new JSON file (mode 0600); return its name.

    Raises ``OSError`` when it cannot be written, :class:`~overlay.media.inbox_limits.InboxFull`
    (also an ``OSError``) when the inbox quota or the free disk space has no room for it."""
    item = {
        "from_user": msg.from_user, "from_device": msg.from_device,
        "from_key": msg.from_key.hex(),
        "payload": base64.b64encode(msg.payload).decode(), "received_at": time.time(),
    }
    data = json.dumps(item)
    check_room(inbox, limits or InboxLimits(), len(data))
    name = f"{time.time_ns()}-{secrets.token_hex(4)}.json"
    write_private(inbox / name, data, prefix=".in.")
    return name
