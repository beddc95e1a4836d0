"""How much a peer may put into a client's inbox: a quota in bytes and in files, and free
space left on the disk.

Everything a peer makes this client write (received files, their ``.partial`` files, signal
files written by :mod:`overlay.client.inbox`) lives in the inbox directory, so the quota is
counted there: the regular files directly inside it (the user's own files count too; moving
received files out frees room). :func:`room_error` is the decision (numbers in, reason out);
:class:`InboxGuard` adds the transfers in progress, counted at their announced size, so two
concurrent transfers cannot both take the last room.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from overlay.media.errors import MediaError

GiB = 2**30
MiB = 2**20
DEFAULT_MAX_BYTES = 1 * GiB
DEFAULT_MAX_FILES = 1000
#: a file is refused when it would leave less than this free on the inbox's file system
DEFAULT_MIN_FREE_BYTES = 64 * MiB


class InboxFull(MediaError, OSError):
    """The inbox has no room for what a peer sent (quota or free disk space); the message
    says which, in a user's words (it is also what the sender is told)."""


@dataclass(frozen=True)
class InboxLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_files < 0 or self.min_free_bytes < 0:
            raise ValueError("inbox limits are not negative")


@dataclass(frozen=True)
class Usage:
    """The inbox's regular files (bytes, count) and the file system's free bytes."""

    bytes: int
    files: int
    free: int


def usage(inbox: Path, exclude: frozenset[Path] = frozenset()) -> Usage:
    """Count the regular files directly in ``inbox`` (not those in ``exclude``)."""
    total = count = 0
    if inbox.is_dir():
        with os.scandir(inbox) as entries:
            for entry in entries:
                if Path(entry.path) in exclude:
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                        count += 1
    free = shutil.disk_usage(inbox if inbox.is_dir() else inbox.parent).free
    return Usage(total, count, free)


def room_error(limits: InboxLimits, used: Usage, incoming: int, new_files: int,
               to_write: int) -> str | None:
    """Why ``incoming`` more bytes in ``new_files`` more files (of which ``to_write`` bytes
    are still to be written to disk) do not fit, or None when they do."""
    if used.files + new_files > limits.max_files:
        return (f"inbox full: {used.files} files, the quota is {limits.max_files} files")
    if used.bytes + incoming > limits.max_bytes:
        return (f"inbox full: {used.bytes} + {incoming} bytes would exceed the quota of "
                f"{limits.max_bytes} bytes")
    if used.free - to_write < limits.min_free_bytes:
        return (f"not enough free disk space: {used.free} bytes free, {to_write} needed and "
                f"{limits.min_free_bytes} kept free")
    return None


def check_room(inbox: Path, limits: InboxLimits, incoming: int) -> None:
    """Raise :class:`InboxFull` unless one more file of ``incoming`` bytes fits."""
    error = room_error(limits, usage(inbox), incoming, 1, incoming)
    if error is not None:
        raise InboxFull(error)


@dataclass
class InboxGuard:
    """The limits of one inbox and the transfers in progress into it (path -> size)."""

    limits: InboxLimits = field(default_factory=InboxLimits)
    active: dict[Path, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def admit(self, inbox: Path, partial: Path, size: int, received: int) -> Iterator[None]:
        """Hold room for a transfer of ``size`` bytes into ``partial`` (``received`` already
        there) while inside; :class:`InboxFull` when there is none."""
        others = frozenset(self.active)
        try:
            used = usage(inbox, others | {partial})
        except OSError as exc:
            raise InboxFull(f"the receiver cannot check its inbox: {exc.strerror}") from None
        in_flight = sum(self.active.values())
        written = sum(_size(p) for p in others)
        error = room_error(
            self.limits, Usage(used.bytes + in_flight, used.files + len(others), used.free),
            size, 1, size - received + max(0, in_flight - written))
        if error is not None:
            raise InboxFull(error)
        self.active[partial] = size
        try:
            yield
        finally:
            self.active.pop(partial, None)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
