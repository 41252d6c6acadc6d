"""The domain scheduler's rules, driven by fake checkers that record every call.

The checker is the collaborator here: what a real check finds is tested against real DNS and
HTTPS servers in test_domain_check.py and test_domains_service_e2e.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from exporter.domains.config import DnsConfig, DomainConfig
from exporter.domains.model import (
    CheckFailure,
    CheckReason,
    DomainResult,
    MxCheck,
    MxHost,
    MxSet,
    MxStatus,
    StsResult,
    StsState,
    TlsRptResult,
)
from exporter.model import ProbeResult, Target, VerifyPolicy
from exporter.service.domain_scheduler import DomainScheduler
from exporter.service.scheduler import Scheduler
from exporter.service.state import ServiceState
from tests.test_scheduler import FakeProbe, until

DNS = DnsConfig()
MxProbe = Callable[[Target], Awaitable[ProbeResult]]


def domain(name: str = "example.test", **kw: object) -> DomainConfig:
    fields: dict[str, object] = {"interval": 3600.0, "mx_interval": 3600.0, "timeout": 5.0}
    fields.update(kw)
    return DomainConfig(name, **fields)  # type: ignore[arg-type]


class FakeChecker:
    """Answers `check` with an MX set of `hosts` and no MTA-STS; `probe_mx` probes them through
    `probe_fn` (the scheduler's MX probe slot) when given, else marks them compliant."""

    def __init__(
        self,
        config: DomainConfig,
        hosts: tuple[str, ...] = ("mx1.example.test",),
        probe_fn: MxProbe | None = None,
    ) -> None:
        self.config = config
        self.hosts = tuple(MxHost(h, 10 * (i + 1)) for i, h in enumerate(hosts))
        self.probe_fn = probe_fn
        self.calls: list[tuple[str, float]] = []  # ("check" | "probe", monotonic time)
        self.gate: asyncio.Event | None = None  # holds check() while set and not released
        self.raise_in: set[str] = set()
        self.failure: CheckFailure | None = None
        self.cancelled = 0

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)

    async def check(self, *, probe_mx: bool = True) -> DomainResult:
        assert probe_mx is False  # the scheduler probes the MX hosts itself, in their slots
        self.calls.append(("check", time.monotonic()))
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if "check" in self.raise_in:
            raise RuntimeError("bug in check")
        failure = self.failure or CheckFailure(CheckReason.NO_RECORD, "no record")
        state = StsState.ABSENT if failure.reason is CheckReason.NO_RECORD else StsState.INVALID
        return DomainResult(
            domain=self.config.name,
            started_at=time.time(),
            duration=0.0,
            mx=MxSet(MxStatus.MX, self.hosts),
            sts=StsResult(state, state is StsState.INVALID, failure=failure),
            tlsrpt=TlsRptResult(False, failure=CheckFailure(CheckReason.NO_RECORD)),
            mx_checks=tuple(MxCheck(h, None) for h in self.hosts),
        )

    async def probe_mx(self, result: DomainResult) -> DomainResult:
        self.calls.append(("probe", time.monotonic()))
        if "probe" in self.raise_in:
            raise RuntimeError("bug in probe_mx")
        checks = []
        for c in result.mx_checks:
            if self.probe_fn is None:
                checks.append(dataclasses.replace(c, compliant=True))
                continue
            target = Target.create(
                c.name,
                25,
                verify=VerifyPolicy.REPORT,
                timeout=self.config.timeout,
                labels={"domain": self.config.name, "mx_preference": str(c.host.preference)},
            )
            probed = await self.probe_fn(target)
            checks.append(dataclasses.replace(c, probe=probed, compliant=probed.success))
        return dataclasses.replace(result, mx_checks=tuple(checks))


class Factory:
    """make_checker for the scheduler: one FakeChecker per call, kept for the test to inspect."""

    def __init__(self, probe_fn: MxProbe | None = None, **kw: object) -> None:
        self.made: list[tuple[DomainConfig, DnsConfig, FakeChecker]] = []
        self.probe_fn = probe_fn
        self.kw = kw

    def __call__(self, config: DomainConfig, dns: DnsConfig) -> FakeChecker:
        checker = FakeChecker(config, probe_fn=self.probe_fn, **self.kw)  # type: ignore[arg-type]
        self.made.append((config, dns, checker))
        return checker

    def latest(self, name: str) -> FakeChecker:
        return next(c for d, _, c in reversed(self.made) if d.name == name)


@pytest.fixture
def state() -> ServiceState:
    return ServiceState()


async def test_checked_at_start_and_mx_reprobed_between_checks(state: ServiceState) -> None:
    factory = Factory()
    scheduler = DomainScheduler(state, factory)
    config = domain(interval=0.6, mx_interval=0.1)
    try:
        await scheduler.update([config], DNS)
        checker = factory.latest(config.name)
        await until(lambda: checker.count("check") >= 3, "three checks")
    finally:
        await scheduler.stop()
    kinds = [k for k, _ in checker.calls]
    assert kinds[:2] == ["check", "probe"]  # at once, and each check is followed by its probes
    for i, kind in enumerate(kinds[:-1]):
        if kind == "check":
            assert kinds[i + 1] == "probe"
    # Between two checks, 0.6s apart, MX probes every 0.1s: the one after the check and a few
    # more, never more often than mx_interval.
    checks = [i for i, k in enumerate(kinds) if k == "check"]
    between = kinds[checks[1] : checks[2]].count("probe")
    assert 3 <= between <= 6, kinds
    probes = [t for k, t in checker.calls if k == "probe"]
    assert min(b - a for a, b in itertools.pairwise(probes)) >= 0.1 - 0.02
    checked = [t for k, t in checker.calls if k == "check"]
    assert checked[2] - checked[1] == pytest.approx(0.6, abs=0.1)
    result = state.snapshot().domain_results[config.name]
    assert [c.compliant for c in result.mx_checks] == [True]


async def test_without_probe_mx_only_checks(state: ServiceState) -> None:
    factory = Factory()
    scheduler = DomainScheduler(state, factory)
    config = domain(interval=0.1, mx_interval=0.02, probe_mx=False)
    try:
        await scheduler.update([config], DNS)
        checker = factory.latest(config.name)
        await until(lambda: checker.count("check") >= 3, "three checks")
    finally:
        await scheduler.stop()
    assert checker.count("probe") == 0
    result = state.snapshot().domain_results[config.name]
    assert [(c.probe, c.compliant) for c in result.mx_checks] == [(None, None)]


async def test_the_checker_and_its_cache_survive_a_reload_unless_changed(
    state: ServiceState,
) -> None:
    factory = Factory()
    scheduler = DomainScheduler(state, factory)
    a, b = domain("a.example.test"), domain("b.example.test")
    try:
        await scheduler.update([a, b], DNS)
        await until(lambda: len(state.snapshot().domain_results) == 2, "both results")
        first_a, first_b = scheduler.checker(a.name), scheduler.checker(b.name)

        # Same configs: same checkers, not checked again (interval 1h).
        await scheduler.update([a, b], DNS)
        assert scheduler.checker(a.name) is first_a and scheduler.checker(b.name) is first_b
        assert len(factory.made) == 2

        # b changed: a new checker, checked at once; its old result is gone until then.
        b2 = dataclasses.replace(b, timeout=3.0)
        await scheduler.update([a, b2], DNS)
        new_b = scheduler.checker(b.name)
        assert new_b is not first_b and scheduler.checker(a.name) is first_a
        await until(lambda: b.name in state.snapshot().domain_results, "b's new result")
        assert factory.latest(b.name).count("check") == 1
        assert scheduler.domains == (a, b2)

        # Another DNS config: every domain gets a new checker.
        other = DnsConfig((("127.0.0.1", 5353),), 1.0)
        await scheduler.update([a, b2], other)
        assert scheduler.checker(a.name) is not first_a
        assert [dns for _, dns, _ in factory.made[-2:]] == [other, other]

        # a removed: its task ends, its result goes.
        await until(lambda: len(state.snapshot().domain_results) == 2, "both results again")
        await scheduler.update([b2], other)
        assert set(state.snapshot().domain_results) == {b.name}
        assert scheduler.checker(a.name) is None
        assert state.snapshot().domains == (b2,)
    finally:
        await scheduler.stop()


async def test_a_check_that_raises_is_logged_and_rescheduled(
    state: ServiceState, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    scheduler = DomainScheduler(state, factory)
    config = domain(interval=0.05, mx_interval=0.05)
    caplog.set_level(logging.ERROR, logger="exporter.service.domain_scheduler")
    try:
        await scheduler.update([config], DNS)
        checker = factory.latest(config.name)
        checker.raise_in.add("check")
        await until(lambda: checker.count("check") >= 4, "four checks")
        # It heals: the next check gives a result.
        checker.raise_in.clear()
        await until(lambda: config.name in state.snapshot().domain_results, "a result")
    finally:
        await scheduler.stop()
    raised = [r for r in caplog.records if r.getMessage() == "domain check raised"]
    assert raised and vars(raised[0])["domain"] == config.name
    assert raised[0].exc_info is not None


async def test_mx_probes_that_raise_keep_the_last_result(
    state: ServiceState, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    scheduler = DomainScheduler(state, factory)
    config = domain(interval=3600, mx_interval=0.05)
    caplog.set_level(logging.ERROR, logger="exporter.service.domain_scheduler")
    try:
        await scheduler.update([config], DNS)
        checker = factory.latest(config.name)
        await until(lambda: config.name in state.snapshot().domain_results, "the first result")
        checker.raise_in.add("probe")
        await until(lambda: checker.count("probe") >= 4, "MX probes that raise, again and again")
        result = state.snapshot().domain_results[config.name]
    finally:
        await scheduler.stop()
    assert [c.compliant for c in result.mx_checks] == [True]
    assert any(r.getMessage() == "MX probes of a domain raised" for r in caplog.records)


async def test_a_stuck_check_is_cut_off(
    state: ServiceState, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    scheduler = DomainScheduler(state, factory, check_grace=0.05)
    config = domain(interval=0.3, mx_interval=0.3, timeout=0.01)
    dns = DnsConfig(timeout=0.01)
    caplog.set_level(logging.ERROR, logger="exporter.service.domain_scheduler")
    start = time.monotonic()
    try:
        await scheduler.update([config], dns)
        checker = factory.latest(config.name)
        checker.gate = asyncio.Event()  # never set: every check hangs
        await until(lambda: checker.cancelled >= 2, "two checks cut off")
    finally:
        await scheduler.stop()
    # Cut off after 3 * 0.01 + 0.01 + 0.05 s, and checked again on the next slot.
    assert time.monotonic() - start < 2.0
    lines = [r for r in caplog.records if "did not return in time" in r.getMessage()]
    assert len(lines) >= 2 and vars(lines[0])["deadline"] == pytest.approx(0.09)
    assert config.name not in state.snapshot().domain_results


async def test_mx_probes_share_the_concurrency_slots_and_are_counted(
    state: ServiceState, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeProbe()
    fake.fail.add("mx3.example.test:25")
    probes = Scheduler(state, concurrency=1, probe_fn=fake)
    hosts = ("mx1.example.test", "mx2.example.test", "mx3.example.test")
    factory = Factory(probe_fn=probes.probe_mx, hosts=hosts)
    domains = DomainScheduler(state, factory)
    config = domain()
    caplog.set_level(logging.WARNING, logger="exporter.service.scheduler")
    fake.gates["mx1.example.test:25"] = asyncio.Event()
    try:
        await probes.update([])
        await domains.update([config], DNS)
        await until(lambda: fake.total_in_flight() == 1, "the first MX probe")
        assert len(fake.starts) == 1  # the others wait for the one slot
        fake.gates["mx1.example.test:25"].set()
        await until(lambda: config.name in state.snapshot().domain_results, "the result")
    finally:
        await domains.stop()
        await probes.stop()
    assert fake.max_in_flight == 1
    snap = state.snapshot()
    assert snap.probes_total == {"success": 2, "failure": 1}
    assert snap.results == {}  # MX probes live in their domain's result, not as targets
    result = snap.domain_results[config.name]
    assert [c.compliant for c in result.mx_checks] == [True, True, False]
    (line,) = [r for r in caplog.records if r.getMessage() == "probe failed"]
    assert vars(line)["target"] == "mx3.example.test:25"
    assert vars(line)["domain"] == config.name


async def test_one_warning_per_failed_check(
    state: ServiceState, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    good, bad = domain("good.example.test"), domain("bad.example.test")
    caplog.set_level(logging.DEBUG, logger="exporter.service.domain_scheduler")

    def make(config: DomainConfig, dns: DnsConfig) -> FakeChecker:
        checker = factory(config, dns)
        if config is bad:
            checker.failure = CheckFailure(CheckReason.HTTP_STATUS, "HTTP 404 Not Found")
        return checker

    scheduler = DomainScheduler(state, make)
    try:
        await scheduler.update([good, bad], DNS)
        await until(lambda: len(state.snapshot().domain_results) == 2, "both results")
    finally:
        await scheduler.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    (line,) = warnings
    assert line.getMessage() == "domain check failed"
    fields = vars(line)
    assert (fields["domain"], fields["reason"], fields["problems"]) == (bad.name, "http_status", 1)
    assert fields["mta_sts"] == "invalid"
    assert fields["detail"] == "MTA-STS http_status: HTTP 404 Not Found"
    debug = [r for r in caplog.records if r.getMessage() == "domain check succeeded"]
    assert [vars(r)["domain"] for r in debug] == [good.name]


async def test_stop_cancels_checks_in_flight(state: ServiceState) -> None:
    factory = Factory()
    held: list[FakeChecker] = []

    def make(config: DomainConfig, dns: DnsConfig) -> FakeChecker:
        checker = factory(config, dns)
        checker.gate = asyncio.Event()  # never set: the first check stays in flight
        held.append(checker)
        return checker

    scheduler = DomainScheduler(state, make)
    await scheduler.update([domain("a.example.test"), domain("b.example.test")], DNS)
    await until(lambda: all(c.count("check") == 1 for c in held), "both checks in flight")
    await scheduler.stop()
    assert [c.cancelled for c in held] == [1, 1]
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
    assert scheduler.domains == ()
    with pytest.raises(RuntimeError):
        await scheduler.update([domain()], DNS)
