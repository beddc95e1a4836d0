"""Private files (atomic 0600 writes, create-once) and sequence counters."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from overlay.core.files import create_private, write_private, write_private_json
from overlay.core.seq_state import SeqCounter


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    write_private_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and mode(path) == 0o600
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_write_private_leaves_no_temp_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        write_private(target, b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


def test_create_private_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key"
    create_private(path, "secret")
    assert path.read_text() == "secret" and mode(path) == 0o600
    with pytest.raises(FileExistsError):
        create_private(path, "other")
    assert path.read_text() == "secret"


def test_seq_counter_grows_in_memory_and_across_restarts(tmp_path: Path) -> None:
    mem = SeqCounter()
    first = mem.next()
    assert first >= int(time.time() * 1000) - 1000 and mem.next() == first + 1
    path = tmp_path / "seq.json"
    path.write_text(json.dumps({"last_seq": 10**16}))
    assert SeqCounter(path).next() == 10**16 + 1
    assert SeqCounter(path).next() == 10**16 + 2 and mode(path) == 0o600
    path.write_text(json.dumps({"last_seq": True}))  # not a number: ignored
    assert SeqCounter(path).next() < 10**16
