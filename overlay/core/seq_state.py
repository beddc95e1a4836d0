"""Record sequence numbers that only grow, across restarts too.

Each number is ``max(last + 1, now in ms)``. With a ``path`` the last one is remembered in a
small JSON file (``{"last_seq": N}``, mode 0600, replaced atomically), so the numbers keep
growing even when the clock steps back between runs; without one they live in memory (a
supernode's own record: milliseconds since the epoch already grow across restarts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from overlay.core.files import write_private_json
from overlay.core.logs import get_logger
from overlay.core.records import MAX_SEQ

log = get_logger(__name__)


class SeqCounter:
    """``next()`` hands out growing sequence numbers; ``path`` (optional) remembers the last.

    A file that cannot be read or saved is logged as ``ignored_event`` / ``not_saved_event``
    (with ``path`` and ``error``) and never fatal."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        ignored_event: str = "seq_state_ignored",
        not_saved_event: str = "seq_state_not_saved",
    ) -> None:
        self.path = path
        self.last = 0
        self._not_saved_event = not_saved_event
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                value = data.get("last_seq") if isinstance(data, dict) else None
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    self.last = min(value, MAX_SEQ - 1)
            except (OSError, ValueError) as exc:
                log.warning(ignored_event, path=str(path), error=str(exc))

    def next(self) -> int:
        self.last = max(self.last + 1, int(time.time() * 1000))
        self._save()
        return self.last

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            write_private_json(self.path, {"last_seq": self.last},
                               prefix=f".{self.path.stem}.")
        except OSError as exc:
            log.warning(self._not_saved_event, path=str(self.path), error=str(exc))
