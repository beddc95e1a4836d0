"""Per NAT-class pair and per kind of attempt: attempts, wins and time to connect, from real
race timelines (:func:`overlay.media.connect.connect_as_initiator` over real sockets) and
from hand-written ones."""

from __future__ import annotations

import asyncio

import pytest

from overlay.media.connect import NoPath, connect_as_initiator
from overlay.media.connect_stats import MAX_ENTRIES, ConnectStats, attempt_kind, outcome_of
from overlay.media.errors import PathLost
from overlay.media.stream import MediaStream, TcpByteStream


def test_attempt_kind_drops_the_index_only() -> None:
    assert attempt_kind("relay-1") == "relay"
    assert attempt_kind("tcp-dial-mapped-12") == "tcp-dial-mapped"
    assert attempt_kind("udp-punch") == "udp-punch"
    assert attempt_kind("tcp-accept") == "tcp-accept"


def test_counts_attempts_wins_and_time_from_the_start_of_setup() -> None:
    stats = ConnectStats()
    events = [(0.0, "tcp-dial-0: start"), (0.0, "tcp-dial-1: start"), (0.0, "tcp-accept: start"),
              (0.01, "tcp-dial-0: failed (refused)"), (0.25, "udp-punch: start"),
              (0.3, "relay-0: start"), (0.3, "relay-1: start"),
              (0.4, "relay-1: authenticated"), (0.41, "selected relay-1")]
    stats.record("cone", "symmetric", events, setup_s=0.5)
    stats.record("cone", "symmetric", [(0.0, "relay-0: start"), (0.2, "selected relay-0")],
                 setup_s=0.1)
    pair = stats.to_json()["pairs"]["cone/symmetric"]  # type: ignore[index]
    # two dials in one race are one attempt of the kind tcp-dial
    assert pair["tcp-dial"] == {"attempts": 1, "wins": 0}
    assert pair["udp-punch"] == {"attempts": 1, "wins": 0}
    assert pair["relay"] == {"attempts": 2, "wins": 2, "connect_s_p50": 0.605,
                             "connect_s_last": 0.3}
    assert stats.to_json()["races"] == 2


def test_a_move_after_the_race_counts_an_upgrade_and_the_late_attempts() -> None:
    stats = ConnectStats()
    events = [(0.0, "tcp-dial-0: start"), (0.0, "relay-0: start"),
              (0.07, "relay-0: authenticated"), (0.07, "other attempts run on"),
              (0.07, "selected relay-0"), (0.25, "udp-birthday: start"),
              (1.2, "udp-birthday: authenticated"), (1.2, "upgrade: udp-birthday")]
    stats.record("symmetric", "cone", events[:5])  # at the race's end
    assert stats.record_upgrade("symmetric", "cone", events) == "udp-birthday"
    pair = stats.to_json()["pairs"]["symmetric/cone"]  # type: ignore[index]
    assert pair["relay"]["wins"] == 1  # the race was the relay's
    assert pair["udp-birthday"] == {"attempts": 1, "wins": 0, "upgrades": 1}
    assert pair["tcp-dial"] == {"attempts": 1, "wins": 0}  # counted once, by the race
    # no move: nothing counted
    assert stats.record_upgrade("symmetric", "cone", events[:5]) is None
    assert stats.to_json()["races"] == 1


def test_a_race_nothing_won_counts_under_none() -> None:
    stats = ConnectStats()
    stats.record("symmetric", "no-udp", [(0.0, "relay-0: start"),
                                        (8.0, "relay-0: failed (timeout)")])
    pair = stats.to_json()["pairs"]["symmetric/no-udp"]  # type: ignore[index]
    assert pair == {"relay": {"attempts": 1, "wins": 0}, "none": {"attempts": 1, "wins": 0}}


def test_hostile_nat_classes_cannot_grow_the_table_without_bound() -> None:
    stats = ConnectStats()
    for i in range(MAX_ENTRIES * 2):
        stats.record("cone", f"made-up-{i}", [(0.0, "relay-0: start"), (0.1, "selected relay-0")])
    assert len(stats.counts) == MAX_ENTRIES


async def test_a_real_race_feeds_the_counts() -> None:
    """Two attempts over loopback: a TCP dial that is refused and one that connects; the
    connecting one is selected and counted as the win of ``tcp-dial``."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def good() -> MediaStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return TcpByteStream(reader, writer)

    async def refused() -> MediaStream:
        raise PathLost("refused")

    async def secure(raw: MediaStream) -> MediaStream:
        return raw

    stats = ConnectStats()
    try:
        stream, timeline = await connect_as_initiator(
            {"tcp-dial-0": good, "relay-0": refused}, secure, staggers={"relay": 0.0})
        await stream.close()
        stats.record("public", "cone", timeline.events, setup_s=0.0)
        with pytest.raises(NoPath) as failed:
            await connect_as_initiator({"relay-0": refused}, secure, staggers={"relay": 0.0})
        assert failed.value.timeline is not None
        stats.record("public", "cone", failed.value.timeline.events)
    finally:
        server.close()
    pair = stats.to_json()["pairs"]["public/cone"]  # type: ignore[index]
    assert pair["tcp-dial"]["attempts"] == 1 and pair["tcp-dial"]["wins"] == 1
    assert pair["tcp-dial"]["connect_s_last"] >= 0
    assert pair["relay"] == {"attempts": 2, "wins": 0}
    assert pair["none"] == {"attempts": 1, "wins": 0}
    assert outcome_of(timeline.events).winner == "tcp-dial-0"
