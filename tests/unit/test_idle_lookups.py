"""Longest-idle lookup-only sessions first; a request in flight is not idle."""

from __future__ import annotations

from overlay.node.idle_lookups import IdleLookups


def test_longest_idle_first_and_busy_ones_skipped():
    idle: IdleLookups[str] = IdleLookups()
    idle.add("a", 0.0)
    idle.add("b", 1.0)
    idle.add("c", 2.0)
    assert idle.longest_idle(10.0, 1.0) == "a"
    idle.busy("a")
    assert idle.longest_idle(10.0, 1.0) == "b"
    idle.done("a", 9.5)  # answered: idle again, from now
    assert idle.idle_for(10.0, 1.0) == ["b", "c"]
    assert idle.longest_idle(2.5, 1.0) == "b"
    assert idle.longest_idle(2.5, 2.0) is None  # b idle 1.5 s only
    idle.remove("b")
    assert idle.longest_idle(10.0, 1.0) == "c"
    assert len(idle) == 2
