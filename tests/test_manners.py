"""Good manners toward mail servers: connections per host, spacing across reloads and /probe,
back-off when pushed away. Scheduler tests drive an injected probe; /probe tests a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path

import pytest

from exporter.model import Failure, ProbeResult, Reason, Stage, Target
from exporter.service import manners as manners_module
from exporter.service.manners import BACKOFF_MAX, Manners, OnDemand
from exporter.service.scheduler import Scheduler
from exporter.service.state import ServiceState
from tests.test_http import Setup, fetch, sample, setup, until
from tests.test_scheduler import FakeProbe


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result(target: Target, reason: Reason | None = None) -> ProbeResult:
    if reason is None:
        return ProbeResult(target=target, started_at=time.time(), success=True)
    failure = Failure(Stage.GREETING, reason, "scripted")
    return ProbeResult(target=target, started_at=time.time(), success=False, failure=failure)


__all__ = ["setup"]  # the fixture, from test_http

T = Target.create("mx.example.test", 25, interval=60.0, timeout=5.0)


# -- back-off, with a clock of our own --------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_ends_with_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    m = Manners(clock=clock)
    delays = []
    for _ in range(8):
        m.started(T)
        m.finished(T, result(T, Reason.GREETING_REJECTED))
        delays.append(m.not_before(T) - clock.now)
        assert [(b.host, b.port) for b in m.backing_off()] == [("mx.example.test", 25)]
        clock.now = m.not_before(T)
    assert delays == [120, 240, 480, 960, 1920, BACKOFF_MAX, BACKOFF_MAX, BACKOFF_MAX]
    # A timeout neither extends nor ends it; a success ends it.
    m.started(T)
    m.finished(T, result(T, Reason.TIMEOUT))
    assert m.backoff_until(T) == clock.now
    m.finished(T, result(T, Reason.CONNECTION_CLOSED))
    assert m.backoff_until(T) == clock.now + BACKOFF_MAX
    with caplog.at_level(logging.INFO, logger="exporter.service.manners"):
        m.finished(T, result(T))
    assert m.backoff_until(T) == 0 and m.backing_off() == []
    assert "back-off ended" in caplog.text


@pytest.mark.parametrize("reason", [Reason.CONNECTION_REFUSED, Reason.TIMEOUT, Reason.EXPIRED])
def test_reasons_that_do_not_back_off(reason: Reason) -> None:
    m = Manners(clock=Clock())
    m.started(T)
    m.finished(T, result(T, reason))
    assert m.backing_off() == []


def test_a_long_interval_backs_off_by_whole_intervals() -> None:
    clock = Clock()
    m = Manners(clock=clock)
    daily = dataclasses.replace(T, interval=86400.0)
    m.finished(daily, result(daily, Reason.GREETING_REJECTED))
    assert m.backoff_until(daily) - clock.now == 86400.0


# -- /probe decisions -------------------------------------------------------------------------


def test_on_demand_decisions() -> None:
    clock = Clock()
    m = Manners(clock=clock)
    assert m.on_demand(T, force=False) == OnDemand()  # never probed: probe
    # that probe is in flight: no result yet, so neither a cached answer nor a second probe
    refused = m.on_demand(T, force=False)
    assert refused.cached is None and refused.wait == T.timeout
    r = result(T)
    m.finished(T, r)
    clock.now += 30
    assert m.on_demand(T, force=False) == OnDemand(r, 30.0)
    # /probe shortens the timeout to fit the scrape: still the same target
    assert m.on_demand(dataclasses.replace(T, timeout=1.0), force=False).cached is r
    # another definition of the target (a changed CA file): not that result
    other = dataclasses.replace(T, ca_file="/etc/other.pem")
    assert m.on_demand(other, force=False).cached is None
    # forced: at once, and then not again within the minimum spacing
    assert m.on_demand(T, force=True) == OnDemand()
    clock.now += 4
    again = m.on_demand(T, force=True, min_spacing=10)
    assert again.wait == 6 and "forced probes are 10s apart" in again.why
    m.finished(T, r)
    clock.now += 60
    assert m.on_demand(T, force=False) == OnDemand()  # an interval later: probe


def test_on_demand_while_backing_off() -> None:
    clock = Clock()
    m = Manners(clock=clock)
    m.on_demand(T, force=False)
    pushed = result(T, Reason.GREETING_REJECTED)
    m.finished(T, pushed)
    clock.now += 90  # past the interval, within the back-off (120 s)
    assert m.on_demand(T, force=False).cached is pushed
    forced = m.on_demand(T, force=True)
    assert forced.wait == 30 and "backing off" in forced.why


# -- the scheduler ----------------------------------------------------------------------------


def on(host: str, name: str, interval: float = 3600.0) -> Target:
    return Target.create(host, 2525, name=name, interval=interval, timeout=5.0)


async def test_at_most_host_concurrency_probes_per_host() -> None:
    state = ServiceState()
    fake = FakeProbe()
    busy = [on("busy.test", f"b{i}") for i in range(5)]
    other = on("other.test", "o")
    for t in busy:
        fake.gates[t.name] = asyncio.Event()
    scheduler = Scheduler(state, concurrency=10, probe_fn=fake, manners=Manners(2))
    try:
        await scheduler.update([*busy, other])
        await until(lambda: fake.total_in_flight() == 2, "two probes of the busy host")
        # the other host is not held up by the busy one
        await until(lambda: len(fake.ends["o"]) == 1, "the other host's probe")
        assert fake.total_in_flight() == 2
        for t in busy:  # release them one by one: never more than two at once
            fake.gates[t.name].set()
            await until(lambda: fake.total_in_flight() <= 2, "a slot")
        await until(lambda: all(fake.ends[t.name] for t in busy), "every busy probe")
        assert fake.max_in_flight == 3  # two of busy.test and one of other.test at most
    finally:
        await scheduler.stop()


async def test_a_host_slot_taken_without_waiting_counts_with_the_others() -> None:
    m = Manners(2)
    a, b, c = (on("MX.test.", f"n{i}") for i in range(3))  # one host, as written differently
    first = m.try_host_slot(a)
    second = m.try_host_slot(b)
    assert first is not None and second is not None
    assert m.try_host_slot(c) is None  # both slots taken
    assert m.try_host_slot(on("other.test", "o")) is not None
    entered, asking = asyncio.Event(), asyncio.Event()

    async def waiter() -> None:
        asking.set()  # the task runs on, without a pause, until it waits for the host
        async with m.host_slot(c):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(waiter())
    try:
        await until(asking.is_set, "the waiter, queued for the host")
        assert not entered.is_set()
        first()
        # The freed slot goes to the one waiting, not to a later taker that does not wait.
        assert m.try_host_slot(a) is None
        await until(entered.is_set, "the waiter's slot")
        second()
        again = m.try_host_slot(a)
        assert again is not None
        again()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert m.try_host_slot(a) is not None and m.try_host_slot(b) is not None


async def test_a_pushed_away_target_backs_off_and_the_others_keep_their_interval() -> None:
    state = ServiceState()
    interval = 0.1
    pushy, calm = on("pushy.test", "pushy", interval), on("calm.test", "calm", interval)

    async def probe(t: Target) -> ProbeResult:
        fake_starts[t.name].append(time.monotonic())
        return result(t, Reason.GREETING_REJECTED if t.name == "pushy" else None)

    fake_starts: dict[str, list[float]] = {"pushy": [], "calm": []}
    m = Manners(2)
    scheduler = Scheduler(state, concurrency=4, probe_fn=probe, manners=m)
    try:
        await scheduler.update([pushy, calm])
        await until(lambda: len(fake_starts["pushy"]) >= 4, "four probes of pushy", 10)
        gaps = [b - a for a, b in zip(fake_starts["pushy"], fake_starts["pushy"][1:], strict=False)]
        # 2, 4, 8 intervals (give or take the grid's phase, less than one interval)
        for gap, factor in zip(gaps, (2, 4, 8), strict=False):
            assert (factor - 1) * interval <= gap <= (factor + 1) * interval + 0.05, gaps
        calm_gaps = [
            b - a for a, b in zip(fake_starts["calm"], fake_starts["calm"][1:], strict=False)
        ]
        assert len(calm_gaps) > 8
        assert max(calm_gaps[1:]) < 2 * interval, calm_gaps  # the first gap may be up to two
        assert [b.host for b in m.backing_off()] == ["pushy.test"]
    finally:
        await scheduler.stop()


async def test_a_changed_target_keeps_its_spacing_and_its_series() -> None:
    state = ServiceState()
    fake = FakeProbe()
    m = Manners(None)
    scheduler = Scheduler(state, concurrency=4, probe_fn=fake, manners=m)
    a, b = on("a.test", "a"), on("b.test", "b")
    try:
        await scheduler.update([a, b])
        await until(lambda: len(state.snapshot().results) == 2, "first results")
        # a's timeout changes: the same endpoint, so no probe before its interval is up
        a_slower = dataclasses.replace(a, timeout=4.0)
        moved = dataclasses.replace(b, host="b2.test")  # a new host: probed at once
        await scheduler.update([a_slower, moved])
        await until(lambda: len(fake.ends["b"]) == 2, "the moved target's probe")
        assert len(fake.starts["a"]) == 1
        assert m.not_before(a_slower) > time.monotonic() + 3000
        # removed and added back unchanged: not probed, and its last result is shown again
        await scheduler.update([moved])
        assert "a" not in state.snapshot().results
        await scheduler.update([a, moved])
        await until(lambda: "a" in state.snapshot().results, "a's last result, shown again")
        assert state.snapshot().results["a"].target == a
        assert len(fake.starts["a"]) == 1
    finally:
        await scheduler.stop()


# -- /probe on the real service ---------------------------------------------------------------


@pytest.fixture
def spacing(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(manners_module, "FORCE_MIN_SPACING", 0.5)
    return 0.5


async def test_probe_answers_from_the_last_probe_unless_forced(
    setup: Setup, spacing: float
) -> None:
    exp = setup.exporter
    scheduled = exp.service.snapshot().results["good"]
    resp = await fetch(exp.url + "/probe?target=good")
    assert resp.status == 200
    assert resp.headers["X-Probe-Cached"] == "true"
    assert 0 <= int(resp.headers["Age"]) < 60
    stamp = sample(resp.text, "smtp_tls_last_probe_timestamp_seconds", target="good")
    assert stamp == scheduled.started_at

    # Forced: within the minimum spacing of the scheduled probe, refused with Retry-After ...
    await until(
        lambda: exp.service.manners.on_demand(scheduled.target, force=False).age >= spacing,
        "the minimum spacing to pass",
    )
    fresh = await fetch(exp.url + "/probe?target=good&force=true")
    assert fresh.status == 200
    assert "X-Probe-Cached" not in fresh.headers
    new_stamp = sample(fresh.text, "smtp_tls_last_probe_timestamp_seconds", target="good")
    assert new_stamp is not None and new_stamp > scheduled.started_at
    again = await fetch(exp.url + "/probe?target=good&force=true")
    assert again.status == 429
    assert again.headers["Retry-After"] == "1"
    assert "forced probes are 0.5s apart at least" in again.text
    # ... and the next unforced /probe answers with the forced probe's result
    cached = await fetch(exp.url + "/probe?target=good&debug=true")
    assert cached.headers["X-Probe-Cached"] == "true"
    assert cached.text.startswith("Result of the probe started ")


async def test_a_burst_of_sighup_reloads_is_merged(setup: Setup) -> None:
    service = setup.exporter.service
    loaded = Counter[str]()
    original = service.reload_async

    async def counted() -> tuple[bool, str]:
        loaded["reloads"] += 1
        return await original()

    service.reload_async = counted  # type: ignore[method-assign]
    tasks = [service.request_reload() for _ in range(100)]
    queued = [t for t in tasks if t is not None]
    assert len(queued) == 1
    await asyncio.gather(*queued)
    assert loaded["reloads"] == 1
    assert service.request_reload() is not None  # once it started, a new request queues again
    await until(lambda: loaded["reloads"] == 2, "the next reload")


def test_config_refuses_a_bad_host_concurrency(tmp_path: Path) -> None:
    from exporter.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config("defaults: {host_concurrency: 0}\ntargets: []\n")
    assert err.value.problems == ["defaults.host_concurrency: 0 is not a positive integer"]
    assert parse_config("defaults: {host_concurrency: 3}\ntargets: []\n").host_concurrency == 3
    assert parse_config("targets: []\n").host_concurrency == 2
