"""When the opt-in checks run: at the first probe, every checks.interval, at once for a new
address; where they connect; what the state keeps. Fake checks and a hand-moved clock."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from exporter.checks.model import CheckRun
from exporter.model import Checks, Failure, ProbeResult, Reason, Stage, Target
from exporter.service.check_scheduler import FORGET_AFTER, CheckScheduler
from exporter.service.state import ServiceState
from tests.check_results import at, injection, pooled
from tests.test_collector import starttls_ok

DAY = 86400.0
RELAY = Target.create("mail.example.test", 25, checks=Checks(starttls_injection=True))
POOL = dataclasses.replace(RELAY, name="pool", all_addresses=True)
A, B, C = "192.0.2.1", "192.0.2.2", "2001:db8::3"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Checker:
    """Records where the checks were asked to connect; `gate` holds them while a test looks."""

    def __init__(self) -> None:
        self.calls: list[tuple[Target, str | None]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.raise_for: str | None = None

    async def __call__(self, target: Target, address: str | None) -> tuple[CheckRun, ...]:
        self.calls.append((target, address))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if address is not None and address == self.raise_for:
            raise RuntimeError("a bug in a check")
        return (injection(address == B),)


def probed(target: Target = RELAY, address: str = A) -> ProbeResult:
    return dataclasses.replace(starttls_ok(target), peer_address=address)


def pool_at(*addresses: str) -> ProbeResult:
    return pooled(
        POOL, tuple(at(starttls_ok(POOL), a, "ipv6" if ":" in a else "ipv4") for a in addresses)
    )


@pytest.fixture
def parts() -> tuple[ServiceState, Checker, Clock, CheckScheduler]:
    state, checker, clock = ServiceState(), Checker(), Clock()
    return state, checker, clock, CheckScheduler(state, checker, clock=clock)


async def test_first_probe_runs_the_checks_where_it_connected(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    state, checker, _, checks = parts
    checks.after_probe(probed())
    await checks.settle()
    assert checker.calls == [(RELAY, A)]
    assert state.snapshot().checks == {RELAY: {None: (injection(False),)}}


async def test_checks_run_again_at_the_probe_nearest_their_interval(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    _, checker, clock, checks = parts
    runs = []
    for _ in range(3 * 1440 + 1):  # three days of probes, one a minute
        checks.after_probe(probed())
        await checks.settle()
        runs.append(len(checker.calls))
        clock.now += 60.0 + (0.2 if len(runs) % 2 else -0.2)  # probes start a little early, late
    # at the first probe, then once a day: the probe 1440 minutes later, give or take jitter
    assert checker.calls == [(RELAY, A)] * 4
    assert [i for i in range(1, len(runs)) if runs[i] > runs[i - 1]] == [1440, 2880, 4320]


async def test_a_probe_that_reached_no_address_leaves_the_address_to_the_checks(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    _, checker, _, checks = parts
    failed = dataclasses.replace(
        probed(),
        success=False,
        failure=Failure(Stage.CONNECT, Reason.CONNECTION_REFUSED, "refused"),
    )
    checks.after_probe(failed)
    await checks.settle()
    assert checker.calls == [(RELAY, None)]  # resolved afresh by the checks


async def test_every_address_and_at_once_a_new_one(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    state, checker, clock, checks = parts
    checks.after_probe(pool_at(A, B))
    await checks.settle()
    assert checker.calls == [(POOL, A), (POOL, B)]
    assert set(state.snapshot().checks[POOL]) == {A, B}
    clock.now += 60
    checks.after_probe(pool_at(A, C))  # B left DNS, C joined
    await checks.settle()
    assert checker.calls[2:] == [(POOL, C)]  # only the newcomer, not A again
    assert set(state.snapshot().checks[POOL]) == {A, C}  # B's results are gone
    clock.now += 60
    checks.after_probe(pool_at(A, C))
    await checks.settle()
    assert len(checker.calls) == 3
    clock.now += DAY
    checks.after_probe(pool_at(A, B, C))  # due: all of them, B again
    await checks.settle()
    assert checker.calls[3:] == [(POOL, A), (POOL, B), (POOL, C)]


async def test_addresses_the_checks_could_not_be_keyed_by_are_skipped(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    _, checker, _, checks = parts
    failed = pooled(POOL, ())  # the lookup failed: no address to check
    checks.after_probe(failed)
    await checks.settle()
    assert checker.calls == []
    checks.after_probe(pool_at(A))  # the next probe found one: checked at once
    await checks.settle()
    assert checker.calls == [(POOL, A)]


async def test_one_run_at_a_time_per_target(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    _, checker, clock, checks = parts
    every_minute = dataclasses.replace(RELAY, checks=Checks(starttls_injection=True, interval=60))
    checker.gate = asyncio.Event()
    checks.after_probe(probed(every_minute))
    await checker.started.wait()  # the run is going on, held at the gate
    for _ in range(3):
        clock.now += 60
        checks.after_probe(probed(every_minute))  # due, but a run is still going on
    checker.gate.set()
    await checks.settle()
    assert checker.calls == [(every_minute, A)]
    clock.now += 60
    checks.after_probe(probed(every_minute))  # due, and nothing running
    await checks.settle()
    assert len(checker.calls) == 2


async def test_targets_without_checks_are_left_alone(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    state, checker, _, checks = parts
    checks.after_probe(probed(dataclasses.replace(RELAY, checks=Checks())))
    implicit = Target.create("mail.example.test", 465, checks=Checks(starttls_injection=True))
    checks.after_probe(probed(implicit))  # its only check does not fit implicit TLS
    await checks.settle()
    assert checker.calls == [] and state.snapshot().checks == {}


async def test_a_target_no_longer_probed_is_forgotten(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    state, _, clock, checks = parts
    other = dataclasses.replace(RELAY, name="other")
    checks.after_probe(probed())
    checks.after_probe(probed(other))
    await checks.settle()
    clock.now += FORGET_AFTER - 1
    checks.after_probe(probed(other))
    assert set(state.snapshot().checks) == {RELAY, other}
    clock.now += 2
    checks.after_probe(probed(other))  # RELAY (removed by a reload, say) has been idle too long
    assert set(state.snapshot().checks) == {other}


async def test_a_check_that_raises_is_logged_and_the_others_go_on(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler], caplog: pytest.LogCaptureFixture
) -> None:
    state, checker, _, checks = parts
    checker.raise_for = A
    with caplog.at_level(logging.ERROR):
        checks.after_probe(pool_at(A, B))
        await checks.settle()
    assert set(state.snapshot().checks[POOL]) == {B}
    assert "checks raised" in caplog.text


async def test_stop_cancels_runs_in_flight(
    parts: tuple[ServiceState, Checker, Clock, CheckScheduler],
) -> None:
    state, checker, _, checks = parts
    checker.gate = asyncio.Event()  # never set: the run would wait for ever
    checks.after_probe(probed())
    await checker.started.wait()
    await checks.stop()
    assert state.snapshot().checks == {}
    checks.after_probe(probed())  # stopped: nothing starts any more
    assert len(checker.calls) == 1
