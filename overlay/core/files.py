"""Private files: written with mode 0600, either atomically replaced or created only once.

:func:`write_private` (and :func:`write_private_json`) write a temporary file next to the
target, set mode 0600, flush it to disk and rename it over the target, so a reader sees the
old content or the new one, never a torn or world-readable file. :func:`create_private`
creates a new file and refuses to overwrite one that exists (``FileExistsError``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

PRIVATE_MODE = 0o600


def write_private(path: Path, data: bytes | str, *, prefix: str | None = None) -> None:
    """Replace ``path`` atomically with ``data`` (text is UTF-8), mode 0600.

    The temporary file (``prefix`` + random, in the same directory) is removed on any error,
    which is re-raised; the parent directory is created if needed."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), PRIVATE_MODE)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_private_json(
    path: Path, obj: Any, *, indent: int | None = None, prefix: str | None = None
) -> None:
    """:func:`write_private` of ``obj`` as JSON."""
    write_private(path, json.dumps(obj, indent=indent), prefix=prefix)


def create_private(path: Path, data: bytes | str) -> None:
    """Create ``path`` with mode 0600 holding ``data``; ``FileExistsError`` if it exists.

    The parent directory is created if needed."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), PRIVATE_MODE)
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
