"""tools/sim's virtual-time loop and clock shim: an hour passes at once, timers keep their
order, a loop that can never progress says so."""

from __future__ import annotations

import asyncio
import time

import pytest

import overlay.core.records
from tools.sim import vloop
from tools.sim.clock import SIM_EPOCH, virtual_time


def test_an_hour_of_sleep_takes_no_wall_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - before

    started = time.perf_counter()
    assert vloop.run(main()) == 3600.0
    assert time.perf_counter() - started < 1.0


def test_timers_fire_in_deadline_order_and_ties_in_scheduling_order() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []

        async def sleeper(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            fired.append((name, loop.time()))

        await asyncio.gather(*(sleeper(n, d) for n, d in
                               [("c", 3.0), ("a1", 1.0), ("b", 2.0), ("a2", 1.0), ("z", 0.25)]))
        return fired

    expected = [("z", 0.25), ("a1", 1.0), ("a2", 1.0), ("b", 2.0), ("c", 3.0)]
    assert vloop.run(main()) == expected
    assert vloop.run(main()) == expected


def test_timeouts_expire_at_their_virtual_deadline() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 10)
        return loop.time()

    assert vloop.run(main()) == 10.0


def test_waiting_for_what_can_never_happen_raises_deadlock() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(vloop.Deadlock):
        vloop.run(main())


def test_code_under_test_reads_the_virtual_clock_and_the_real_one_is_restored() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(7200)
        with virtual_time(loop):
            record_time = overlay.core.records.time.time()
            mono = overlay.core.records.time.monotonic()
        return record_time, mono

    wall, mono = vloop.run(main())
    assert (wall, mono) == (SIM_EPOCH + 7200.0, 7200.0)
    assert overlay.core.records.time is time


def test_executor_work_runs_inline_and_takes_no_virtual_time() -> None:
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        result = await asyncio.to_thread(sum, [1, 2, 3])
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(None, lambda: 1 / 0)
        return result, loop.time()

    assert vloop.run(main()) == (6, 0.0)
