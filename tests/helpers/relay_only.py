"""``python -m tests.helpers.relay_only ARGS``: ``overlay ARGS`` with no direct path, as a
client between two NATs that let nothing in (symmetric, filtering): its media service races
only the relays of an invite (TCP and, for calls, datagram relays). For tests on loopback,
where a direct path would otherwise always win."""

from __future__ import annotations

import sys
from typing import Any

from overlay.cli.main import main
from overlay.media.paths import Paths


def no_direct_paths(*args: Any) -> dict[str, Any]:
    return {}


if __name__ == "__main__":
    Paths.attempts = no_direct_paths  # type: ignore[assignment,method-assign]
    sys.exit(main())
