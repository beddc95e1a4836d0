"""Test layout: ``unit/`` runs in this process (real sockets on loopback, no root),
``process/`` starts real ``overlay`` processes, ``lab/`` builds real NATs in network
namespaces (root). Shared helpers are in ``helpers/``; ``tools/bench`` uses them too.

Each test is marked with its folder's name, so ``pytest -m unit`` runs the fast ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_FOLDER_MARKS = ("unit", "process", "lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _FOLDER_MARKS:
            item.add_marker(getattr(pytest.mark, folder))
            if folder == "lab":
                item.add_marker(pytest.mark.netlab)
