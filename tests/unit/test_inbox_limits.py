"""The inbox quota and free-space decision, sizes as people write them, printable text."""

from __future__ import annotations

import pytest

from overlay.core.text import printable
from overlay.core.units import parse_size
from overlay.media.inbox_limits import InboxFull, InboxGuard, InboxLimits, Usage, room_error

LIMITS = InboxLimits(max_bytes=1000, max_files=3, min_free_bytes=100)


def test_room_error() -> None:
    assert room_error(LIMITS, Usage(0, 0, 10_000), 1000, 1, 1000) is None
    assert "quota" in (room_error(LIMITS, Usage(1, 0, 10_000), 1000, 1, 1000) or "")
    assert "files" in (room_error(LIMITS, Usage(0, 3, 10_000), 1, 1, 1) or "")
    assert room_error(LIMITS, Usage(0, 2, 10_000), 1, 1, 1) is None
    assert "free disk space" in (room_error(LIMITS, Usage(0, 0, 1000), 901, 1, 901) or "")
    assert room_error(LIMITS, Usage(0, 0, 1000), 900, 1, 900) is None


def test_the_guard_counts_transfers_in_progress(tmp_path) -> None:
    guard = InboxGuard(InboxLimits(max_bytes=1000, max_files=10, min_free_bytes=0))
    with guard.admit(tmp_path, tmp_path / "a.partial", 600, 0):
        with pytest.raises(InboxFull), guard.admit(tmp_path, tmp_path / "b.partial", 600, 0):
            pass
        with guard.admit(tmp_path, tmp_path / "c.partial", 400, 0):
            assert len(guard.active) == 2
    assert guard.active == {}
    # a resumed transfer: its partial file is counted once, at the announced size
    (tmp_path / "r.partial").write_bytes(b"x" * 500)
    with guard.admit(tmp_path, tmp_path / "r.partial", 1000, 500):
        pass


def test_parse_size() -> None:
    assert parse_size("1G") == 2**30
    assert parse_size("500M") == 500 * 2**20
    assert parse_size("64KiB") == 64 * 1024
    assert parse_size("123") == 123
    for bad in ("", "G", "-1", "1X", "inf", "nan"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_printable() -> None:
    assert printable("plain text: ok") == "plain text: ok"
    assert printable("\x1b[2J\x07\r\n\u202e\x9b") == "\\x1b[2J\\x07\\r\\n\\u202e\\x9b"
    assert printable("caf\u00e9") == "caf\u00e9"
