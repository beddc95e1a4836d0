"""What every benchmark records about the machine and the tree it measured."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers.repo import REPO


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git(*args: str) -> str | None:
    """``git ARGS`` in this repository: its output, or None when git is missing or fails."""
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                           cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def uncommitted(*paths: str) -> bool | None:
    """Whether ``paths`` have changes git has not committed (None: git could not tell)."""
    dirty = git("status", "--porcelain", "--", *paths)
    return bool(dirty) if dirty is not None else None


def cpu_affinity() -> int | None:
    """How many CPUs this process may run on (None where the platform cannot say)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def emit_json(doc: Any, out: str | Path | None) -> None:
    """A benchmark's JSON document: to stdout, and also to ``out`` when given."""
    text = json.dumps(doc, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
