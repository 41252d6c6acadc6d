"""The scheduler's timing rules, driven by an injected probe function that records every call."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest

from exporter.model import Failure, ProbeResult, Reason, Stage, Target
from exporter.service.manners import Manners
from exporter.service.scheduler import TICK, Scheduler, next_slot, on_tick, phase
from exporter.service.state import ServiceState

DEADLINE = 5.0


def target(name: str, interval: float = 3600.0, timeout: float = 5.0) -> Target:
    return Target.create("127.0.0.1", 2525, name=name, interval=interval, timeout=timeout)


class FakeProbe:
    """Records each call's start and end; a test may hold a target's probes on a gate."""

    def __init__(self, duration: float = 0.0) -> None:
        self.duration = duration
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.ends: dict[str, list[float]] = defaultdict(list)
        self.cancelled: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight = 0
        self.max_in_flight_per_target: Counter[str] = Counter()
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()

    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())

    async def __call__(self, t: Target) -> ProbeResult:
        self.starts[t.name].append(time.monotonic())
        self.in_flight[t.name] += 1
        self.max_in_flight = max(self.max_in_flight, self.total_in_flight())
        self.max_in_flight_per_target[t.name] = max(
            self.max_in_flight_per_target[t.name], self.in_flight[t.name]
        )
        try:
            if t.name in self.gates:
                await self.gates[t.name].wait()
            if self.duration:
                await asyncio.sleep(self.duration)  # the probe's own running time, not a wait
        except asyncio.CancelledError:
            self.cancelled[t.name] += 1
            raise
        finally:
            self.in_flight[t.name] -= 1
            self.ends[t.name].append(time.monotonic())
        if t.name in self.fail:
            failure = Failure(Stage.CONNECT, Reason.CONNECTION_REFUSED, "scripted refusal")
            return ProbeResult(target=t, started_at=time.time(), success=False, failure=failure)
        return ProbeResult(target=t, started_at=time.time(), success=True)


async def until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll `condition` until it holds; fail with `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def state() -> ServiceState:
    return ServiceState()


# -- the grid ---------------------------------------------------------------------------------

NEXT_SLOT = [
    # epoch, interval, frac, previous, now, expected
    # first probe at 0 (start), phase 0.5: the first slot at least one interval later is 15
    (0.0, 10.0, 0.5, 0.0, 0.1, 15.0),
    # phase 0: the slot exactly one interval later
    (0.0, 10.0, 0.0, 0.0, 0.1, 10.0),
    # on the grid: the next slot is one interval on
    (0.0, 10.0, 0.5, 15.0, 15.2, 25.0),
    (100.0, 60.0, 0.25, 115.0, 116.0, 175.0),
    # a first probe just after a slot waits almost two intervals for the next one
    (0.0, 10.0, 0.5, 5.01, 5.5, 25.0),
    # the probe overran: the latest slot not after now, once, not every missed slot
    (0.0, 10.0, 0.5, 15.0, 47.0, 45.0),
    (0.0, 10.0, 0.5, 15.0, 25.0, 25.0),
]


@pytest.mark.parametrize(("epoch", "interval", "frac", "previous", "now", "expected"), NEXT_SLOT)
def test_next_slot(
    epoch: float, interval: float, frac: float, previous: float, now: float, expected: float
) -> None:
    assert next_slot(epoch, interval, frac, previous, now) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("when", "interval", "expected"),
    [
        (10.1, 60.0, 10.25),  # the next multiple of TICK
        (10.25, 60.0, 10.25),  # on a tick already
        (10.0001, 1.0, 10.01),  # short intervals: a hundredth of the interval
        (7.0, 3600.0, 7.0),
    ],
)
def test_later_probes_start_on_the_shared_tick(
    when: float, interval: float, expected: float
) -> None:
    assert TICK == 0.25
    assert on_tick(when, interval) == pytest.approx(expected)


def test_phase_is_stable_and_spreads_targets() -> None:
    assert phase("mx1.example.test:25") == phase("mx1.example.test:25")
    phases = [phase(f"mx{i}.example.test:25") for i in range(1000)]
    assert all(0.0 <= p < 1.0 for p in phases)
    deciles = Counter(int(p * 10) for p in phases)
    # 1000 uniform draws: every tenth of the interval gets roughly 100 targets.
    assert sorted(deciles) == list(range(10))
    assert min(deciles.values()) > 60


# -- the running scheduler --------------------------------------------------------------------


async def test_every_target_is_probed_at_start(state: ServiceState) -> None:
    fake = FakeProbe()
    scheduler = Scheduler(state, concurrency=4, probe_fn=fake)
    targets = [target(f"t{i}") for i in range(3)]
    start = time.monotonic()
    try:
        await scheduler.update(targets)
        await until(lambda: len(fake.starts) == 3, "three first probes")
        assert all(s[0] - start < 1.0 for s in fake.starts.values())
        await until(lambda: len(state.snapshot().results) == 3, "three results")
        assert state.snapshot().targets == tuple(targets)
    finally:
        await scheduler.stop()


async def test_probes_follow_the_interval(state: ServiceState) -> None:
    interval = 0.2
    fake = FakeProbe()
    scheduler = Scheduler(state, concurrency=2, probe_fn=fake)
    try:
        await scheduler.update([target("a", interval=interval)])
        await until(lambda: len(fake.starts["a"]) >= 5, "five probes")
    finally:
        await scheduler.stop()
    starts = fake.starts["a"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Never more often than the interval; the first gap is below two intervals, then on the grid.
    assert min(gaps) >= interval - 0.01
    assert gaps[0] < 2 * interval + 0.1
    for gap in gaps[1:]:
        assert gap == pytest.approx(interval, abs=0.1)


async def test_probes_of_one_target_never_overlap(state: ServiceState) -> None:
    # Each probe runs three intervals: the next one waits for it, then runs at once, late.
    fake = FakeProbe(duration=0.15)
    scheduler = Scheduler(state, concurrency=4, probe_fn=fake)
    try:
        await scheduler.update([target("slow", interval=0.05)])
        await until(lambda: len(fake.ends["slow"]) >= 4, "four probes")
    finally:
        await scheduler.stop()
    assert fake.max_in_flight_per_target["slow"] == 1
    starts, ends = fake.starts["slow"], fake.ends["slow"]
    for i in range(1, len(starts)):
        assert starts[i] >= ends[i - 1]
    # Late, but for the latest missed slot only: less than one interval behind.
    assert 0 < state.snapshot().scheduler_lag_max_seconds < 0.05 + 0.1


async def test_a_hung_target_does_not_delay_the_others(state: ServiceState) -> None:
    fake = FakeProbe()
    fake.gates["hung"] = asyncio.Event()  # never set
    scheduler = Scheduler(state, concurrency=2, probe_fn=fake)
    try:
        await scheduler.update([target("hung", interval=0.05), target("quick", interval=0.05)])
        await until(lambda: len(fake.starts["quick"]) >= 6, "six probes of the quick target")
        assert len(fake.starts["hung"]) == 1
        assert fake.in_flight["hung"] == 1
        assert "hung" not in state.snapshot().results
    finally:
        await scheduler.stop()
    # Shutdown cancelled the hung probe rather than waiting for it.
    assert fake.cancelled["hung"] == 1
    assert fake.in_flight["hung"] == 0


async def test_a_probe_that_ignores_its_timeout_is_cut_off(state: ServiceState) -> None:
    fake = FakeProbe()
    fake.gates["stuck"] = asyncio.Event()  # never set
    scheduler = Scheduler(state, concurrency=1, probe_fn=fake, stuck_grace=0.05)
    try:
        await scheduler.update([target("stuck", timeout=0.05), target("next")])
        # With one concurrency slot, "next" runs only once the stuck probe has been cut off.
        await until(lambda: "next" in state.snapshot().results, "the other target's result")
        stuck = state.snapshot().results["stuck"]
    finally:
        await scheduler.stop()
    assert fake.cancelled["stuck"] == 1
    assert stuck.failure == Failure(
        Stage.INTERNAL, Reason.INTERNAL_ERROR, "the probe did not return within its 0.05s timeout"
    )


async def test_a_probe_that_raises_is_recorded_and_rescheduled(state: ServiceState) -> None:
    calls = 0

    async def broken(t: Target) -> ProbeResult:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    scheduler = Scheduler(state, concurrency=1, probe_fn=broken)
    try:
        await scheduler.update([target("broken", interval=0.05)])
        await until(lambda: calls >= 3, "three calls")
    finally:
        await scheduler.stop()
    result = state.snapshot().results["broken"]
    assert result.failure == Failure(Stage.INTERNAL, Reason.INTERNAL_ERROR, "RuntimeError: bug")


async def test_concurrency_is_bounded(state: ServiceState) -> None:
    fake = FakeProbe()
    names = [f"t{i}" for i in range(8)]
    for name in names:
        fake.gates[name] = asyncio.Event()
    scheduler = Scheduler(state, concurrency=3, probe_fn=fake)
    try:
        await scheduler.update([target(n) for n in names])
        await until(lambda: fake.total_in_flight() == 3, "three probes in flight")
        # The other five are waiting for a slot, not running.
        assert len(fake.starts) == 3
        for name in names:
            fake.gates[name].set()
        await until(lambda: len(state.snapshot().results) == 8, "all eight results")
    finally:
        await scheduler.stop()
    assert fake.max_in_flight == 3
    # The ones that waited for a slot started late, and the lag says so.
    assert state.snapshot().scheduler_lag_max_seconds > 0


async def test_update_adds_removes_and_restarts_changed_targets(state: ServiceState) -> None:
    fake = FakeProbe()
    scheduler = Scheduler(state, concurrency=4, probe_fn=fake)
    a, b, c = target("a"), target("b"), target("c")
    try:
        await scheduler.update([a, b])
        await until(lambda: len(state.snapshot().results) == 2, "first results")

        # A new port: a new endpoint. (Changed otherwise, it keeps its spacing: test_manners.)
        a_changed = dataclasses.replace(a, port=2526)
        fake.gates["c"] = asyncio.Event()  # c's probe stays in flight
        await scheduler.update([a_changed, b, c])
        # The added target and the moved one are probed at once; b keeps its schedule.
        await until(lambda: len(fake.starts["a"]) == 2, "the changed target's new probe")
        await until(lambda: len(fake.starts["c"]) == 1, "the added target's probe")
        assert len(fake.starts["b"]) == 1
        await until(lambda: state.snapshot().results["a"].target == a_changed, "a's new result")
        assert scheduler.targets == (a_changed, b, c)

        # Removing c cancels its probe in flight, and drops its series (state).
        await scheduler.update([a_changed, b])
        assert fake.cancelled["c"] == 1
        assert fake.in_flight["c"] == 0
        snap = state.snapshot()
        assert snap.targets == (a_changed, b)
        assert set(snap.results) == {"a", "b"}

        await scheduler.update([b])
        assert set(state.snapshot().results) == {"b"}
        assert len(fake.starts["b"]) == 1
    finally:
        await scheduler.stop()


async def test_update_changes_the_concurrency(state: ServiceState) -> None:
    fake = FakeProbe()
    names = [f"t{i}" for i in range(4)]
    for name in names:
        fake.gates[name] = asyncio.Event()
    scheduler = Scheduler(state, concurrency=1, probe_fn=fake)
    try:
        await scheduler.update([target(n) for n in names[:2]])
        await until(lambda: fake.total_in_flight() == 1, "one probe in flight")
        # Two new targets under a limit of two: both run, beside the one holding the old slot.
        await scheduler.update([target(n) for n in names], concurrency=2)
        await until(lambda: fake.total_in_flight() == 3, "three probes in flight")
        assert fake.in_flight["t2"] == fake.in_flight["t3"] == 1
    finally:
        await scheduler.stop()


async def test_stop_cancels_probes_and_ends_the_schedule(state: ServiceState) -> None:
    fake = FakeProbe()
    fake.gates["held"] = asyncio.Event()
    scheduler = Scheduler(state, concurrency=2, probe_fn=fake)
    await scheduler.update([target("held"), target("ticking", interval=0.02)])
    await until(lambda: len(fake.starts["ticking"]) >= 2, "the ticking target's probes")
    await until(lambda: fake.in_flight["held"] == 1, "the held probe")
    await scheduler.stop()
    assert fake.cancelled["held"] == 1
    assert fake.total_in_flight() == 0
    assert scheduler.targets == ()
    count = len(fake.starts["ticking"])
    # Tasks are gone: nothing is left on the loop that could start another probe.
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
    # Nor a timer: for five more of its intervals, the ticking target is not probed again.
    # (A wait that can only make this test pass wrongly, never fail wrongly.)
    await asyncio.sleep(0.1)
    assert len(fake.starts["ticking"]) == count
    with pytest.raises(RuntimeError):
        await scheduler.update([target("late")])


async def test_a_failed_probe_logs_one_warning_with_stage_and_reason(
    state: ServiceState, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeProbe()
    fake.fail.add("down")
    scheduler = Scheduler(state, concurrency=2, probe_fn=fake)
    caplog.set_level(logging.DEBUG, logger="exporter.service.scheduler")
    try:
        await scheduler.update([target("down"), target("up")])
        await until(lambda: len(state.snapshot().results) == 2, "both results")
    finally:
        await scheduler.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    record = warnings[0]
    assert record.getMessage() == "probe failed"
    assert vars(record)["target"] == "down"
    assert vars(record)["stage"] == "connect"
    assert vars(record)["reason"] == "connection_refused"
    assert vars(record)["detail"] == "scripted refusal"
    assert state.snapshot().probes_total == {"success": 1, "failure": 1}


def probe_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("probe ")]


async def test_targets_waiting_for_a_slot_hold_no_task(state: ServiceState) -> None:
    fake = FakeProbe()
    names = [f"t{i}" for i in range(50)]
    for name in names:
        fake.gates[name] = asyncio.Event()
    scheduler = Scheduler(state, concurrency=3, probe_fn=fake)
    try:
        await scheduler.update([target(n) for n in names])
        await until(lambda: fake.total_in_flight() == 3, "three probes in flight")
        # 47 targets are due and waiting: no task (nor coroutine) each, only the three probes.
        assert len(probe_tasks()) == 3
        # First come, first served: in the order the targets were given.
        assert sorted(fake.starts) == ["t0", "t1", "t2"]
        fake.gates["t1"].set()
        await until(lambda: "t3" in fake.starts, "the next target in the freed slot")
        assert len(probe_tasks()) == 3
        for name in names:
            fake.gates[name].set()
        await until(lambda: len(state.snapshot().results) == 50, "every result")
    finally:
        await scheduler.stop()
    assert fake.max_in_flight == 3
    assert probe_tasks() == []


async def test_a_target_waiting_for_its_host_holds_no_concurrency_slot(
    state: ServiceState,
) -> None:
    def on(host: str, name: str) -> Target:
        return Target.create(host, 2525, name=name, interval=3600.0, timeout=5.0)

    fake = FakeProbe()
    busy = [on("busy.test", f"b{i}") for i in range(5)]
    for t in busy:
        fake.gates[t.name] = asyncio.Event()
    others = [on(f"other{i}.test", f"o{i}") for i in range(2)]
    for t in others:
        fake.gates[t.name] = asyncio.Event()
    manners = Manners(2)
    # Three slots: two for busy.test (its limit), and the three targets waiting for busy.test
    # must leave the third to the other hosts, listed after them.
    scheduler = Scheduler(state, concurrency=3, probe_fn=fake, manners=manners)
    try:
        await scheduler.update([*busy, *others])
        await until(lambda: fake.total_in_flight() == 3, "three probes in flight")
        assert fake.in_flight["o0"] == 1
        assert sum(fake.in_flight[t.name] for t in busy) == 2
        # o1 waits for a global slot, as it should: the limit holds.
        assert "o1" not in fake.starts
        fake.gates["o0"].set()
        await until(lambda: fake.in_flight["o1"] == 1, "o1 in the slot o0 gave back")
        for t in [*busy, *others]:
            fake.gates[t.name].set()
        await until(lambda: len(state.snapshot().results) == 7, "every result")
    finally:
        await scheduler.stop()
    assert fake.max_in_flight == 3
    assert manners.host_concurrency == 2


class CancelAtStart(Manners):
    """Cancels every probe task just after the scheduler takes a host slot for it, before the
    task's first step (as a stop or a reload at that very moment would)."""

    def try_host_slot(self, t: Target) -> Callable[[], None] | None:
        release = super().try_host_slot(t)
        if t.name == "first" and not self.cancelled:
            self.cancelled = True

            def cancel() -> None:
                for task in probe_tasks():
                    task.cancel()

            asyncio.get_running_loop().call_soon(cancel)  # runs before the task's first step
        return release

    cancelled = False


async def test_a_probe_cancelled_before_it_ran_gives_its_slots_back(state: ServiceState) -> None:
    fake = FakeProbe()
    manners = CancelAtStart(1)
    scheduler = Scheduler(state, concurrency=1, probe_fn=fake, manners=manners)
    first, second = target("first"), target("second")  # one host, one slot for it
    try:
        await scheduler.update([first, second])
        # With one global and one host slot, "second" runs only if "first" gave both back.
        await until(lambda: "second" in state.snapshot().results, "the second target's result")
        assert manners.cancelled
        assert "first" not in fake.starts
    finally:
        await scheduler.stop()
