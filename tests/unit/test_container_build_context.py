"""The image's build context: every file the Dockerfile copies from it gets past
``.dockerignore`` (setup.py, which builds the relay's C fast path, once did not, and
``docker build`` stopped at its COPY), and what must never go in (a C extension built on this
host, bytecode) stays out.

``.dockerignore`` is read with Docker's rules as far as this file uses them: patterns in order,
the last one matching a path (or one of its parent directories) decides, ``!`` re-includes."""

from __future__ import annotations

import fnmatch
import glob
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ignore_rules() -> list[tuple[bool, str]]:
    """(excludes, pattern) per line of .dockerignore."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((not negated, line.lstrip("!").rstrip("/")))
    return rules


def in_context(path: str, rules: list[tuple[bool, str]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, pattern in rules:
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            excluded = excludes
    return not excluded


def copied_sources() -> list[str]:
    """The sources of the Dockerfile's COPY instructions that read the build context."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        m = re.match(r"^COPY\s+(?!--from)(.+)$", line.strip())
        if m:
            sources += m.group(1).split()[:-1]
    return sources


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    rules = ignore_rules()
    sources = copied_sources()
    assert "setup.py" in sources and "overlay" in sources
    for source in sources:
        matches = glob.glob(source, root_dir=ROOT)
        if not any(c in source for c in "*?["):  # a plain name must exist and get through
            assert matches, f"COPY {source}: no such file"
        for match in matches:
            assert in_context(match, rules), f"COPY {source}: {match} is left out by .dockerignore"


def test_the_package_sources_go_in_and_host_builds_stay_out() -> None:
    rules = ignore_rules()
    assert in_context("overlay/relay/_forwarder.c", rules)
    assert in_context("overlay/relay/datagram.py", rules)
    assert not in_context("overlay/relay/_forwarder.cpython-311-x86_64-linux-gnu.so", rules)
    assert not in_context("overlay/relay/__pycache__/datagram.cpython-311.pyc", rules)
    assert not in_context("tests/unit/test_relay.py", rules)
    assert not in_context(".venv/bin/python", rules)
