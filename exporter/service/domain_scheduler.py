"""Runs every configured mail domain's checks on its intervals and records each result in the state.

Each domain has one task and one checker (`DomainChecker`), kept across reloads while the domain's
config and the `dns:` config are unchanged, so the checker's policy cache survives a reload; a
changed domain gets a new checker and is checked at once, like an added one.

The task checks the domain (MX set, MTA-STS record and policy, TLS-RPT record) when it starts and
then every `interval`, each check followed by a probe of every MX host when `probe_mx` is set. At
every `mx_interval` slot up to one mx_interval before the next check it probes the MX hosts of the
latest result again, so the MX set changes at checks only. Both grids are the endpoint scheduler's:
`slot(k) = epoch + (phase(name) + k) * interval`, one interval at least between two slots.

MX probes go through `Scheduler.probe_mx`: the same concurrency slots, stuck-probe guard, counters
and log lines as endpoint probes. A check itself (DNS lookups and one HTTPS fetch) takes no probe
slot; at most CHECKS_AT_ONCE run at once, since each policy fetch holds a worker thread of the
loop's default executor for up to its timeout, and a fetch queued behind busy threads would spend
its deadline waiting. A check is bounded by its own timeouts; should it still not return within
`check_deadline`, or raise, that is logged, the previous result stays, and the schedule goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from exporter.domains.config import DnsConfig, DomainConfig
from exporter.domains.model import DomainResult
from exporter.domains.report import findings
from exporter.service.scheduler import next_slot, phase
from exporter.service.state import ServiceState

log = logging.getLogger(__name__)

CHECKS_AT_ONCE = 4
_SAME_TIME = 1e-6  # seconds: slots of two grids this close are one time, give or take rounding
# Seconds past a check's own bounds before the scheduler gives up on it.
CHECK_GRACE = 30.0


class Checker(Protocol):
    """What the scheduler needs of a domain checker (exporter.domains.check.DomainChecker)."""

    async def check(self, *, probe_mx: bool = True) -> DomainResult: ...

    async def probe_mx(self, result: DomainResult) -> DomainResult: ...


CheckerFactory = Callable[[DomainConfig, DnsConfig], Checker]


def check_deadline(domain: DomainConfig, dns: DnsConfig, grace: float = CHECK_GRACE) -> float:
    """An upper bound on one check without MX probes: an MX lookup that falls back to A and AAAA
    (three lookups in a row), beside a TXT lookup and a policy fetch bounded by `timeout`."""
    return 3 * dns.timeout + domain.timeout + grace


@dataclasses.dataclass
class _Job:
    domain: DomainConfig
    dns: DnsConfig
    checker: Checker
    task: asyncio.Task[None]


class DomainScheduler:
    """Owns one task per domain; `update()` installs a new list, `stop()` ends them all."""

    def __init__(
        self,
        state: ServiceState,
        make_checker: CheckerFactory,
        *,
        check_grace: float = CHECK_GRACE,
    ) -> None:
        self._state = state
        self._make_checker = make_checker
        self._check_grace = check_grace
        self._clock = time.monotonic
        self._epoch = self._clock()
        self._checks = asyncio.Semaphore(CHECKS_AT_ONCE)
        self._jobs: dict[str, _Job] = {}
        self._stopped = False

    @property
    def domains(self) -> tuple[DomainConfig, ...]:
        return tuple(job.domain for job in self._jobs.values())

    def checker(self, name: str) -> Checker | None:
        job = self._jobs.get(name)
        return None if job is None else job.checker

    async def update(self, domains: Iterable[DomainConfig], dns: DnsConfig) -> None:
        """Install `domains`: start new and changed ones at once, stop removed ones. A domain
        whose config and `dns` are unchanged keeps its task, checker (and policy cache) and grid."""
        if self._stopped:
            raise RuntimeError("the domain scheduler has been stopped")
        wanted = {d.name: d for d in domains}
        self._state.set_domains(tuple(wanted.values()))
        ending: list[asyncio.Task[None]] = []
        for name, job in list(self._jobs.items()):
            if wanted.get(name) != job.domain or job.dns != dns:
                job.task.cancel()
                ending.append(job.task)
                del self._jobs[name]
        kept, self._jobs = self._jobs, {}
        for name, domain in wanted.items():
            if name in kept:
                self._jobs[name] = kept[name]
                continue
            checker = self._make_checker(domain, dns)
            deadline = check_deadline(domain, dns, self._check_grace)
            task = asyncio.create_task(self._run(domain, checker, deadline), name=f"domain {name}")
            self._jobs[name] = _Job(domain, dns, checker, task)
        await _finish(ending)

    async def stop(self) -> None:
        """Cancel every domain's task (and its MX probes in flight) and wait until they end."""
        self._stopped = True
        tasks = [job.task for job in self._jobs.values()]
        self._jobs.clear()
        for task in tasks:
            task.cancel()
        await _finish(tasks)

    async def _run(self, domain: DomainConfig, checker: Checker, deadline: float) -> None:
        frac = phase(domain.name)
        slot = self._clock()
        result: DomainResult | None = None
        while True:
            await self._sleep_until(slot)
            result = await self._check(domain, checker, deadline) or result
            next_check = next_slot(self._epoch, domain.interval, frac, slot, self._clock())
            if domain.probe_mx and result is not None and result.mx_checks:
                mx_slot = next_slot(self._epoch, domain.mx_interval, frac, slot, self._clock())
                # Only slots a whole mx_interval before the next check (whose MX probes follow
                # it): no MX host is probed more often than mx_interval.
                while mx_slot + domain.mx_interval <= next_check + _SAME_TIME:
                    await self._sleep_until(mx_slot)
                    result = await self._reprobe(domain, checker, result)
                    now = self._clock()
                    mx_slot = next_slot(self._epoch, domain.mx_interval, frac, mx_slot, now)
                    next_check = next_slot(self._epoch, domain.interval, frac, slot, now)
            slot = next_check

    async def _sleep_until(self, when: float) -> None:
        delay = when - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _check(
        self, domain: DomainConfig, checker: Checker, deadline: float
    ) -> DomainResult | None:
        """One check, then its MX probes; None if it failed to produce a result."""
        try:
            async with self._checks:
                t0 = time.monotonic()
                result = await self._bounded_check(domain, checker, deadline)
            if result is None:
                return None
            if domain.probe_mx:
                result = await checker.probe_mx(result)
        except Exception:
            log.exception("domain check raised", extra={"domain": domain.name})
            return None
        result = dataclasses.replace(result, duration=time.monotonic() - t0)
        self._state.record_domain(domain, result)
        log_domain_result(result)
        return result

    async def _bounded_check(
        self, domain: DomainConfig, checker: Checker, deadline: float
    ) -> DomainResult | None:
        timeout = asyncio.timeout(deadline)
        try:
            async with timeout:
                return await checker.check(probe_mx=False)
        except TimeoutError:
            if not timeout.expired():
                raise  # the check's own TimeoutError: a bug, logged as one
            log.error(
                "domain check did not return in time and was cancelled",
                extra={"domain": domain.name, "deadline": deadline},
            )
            return None

    async def _reprobe(
        self, domain: DomainConfig, checker: Checker, result: DomainResult
    ) -> DomainResult:
        """The MX hosts of `result` probed again; `result` itself if that raised."""
        try:
            probed = await checker.probe_mx(result)
        except Exception:
            log.exception("MX probes of a domain raised", extra={"domain": domain.name})
            return result
        self._state.record_domain(domain, probed)
        log.debug("MX hosts probed again", extra={"domain": domain.name})
        return probed


def log_domain_result(result: DomainResult) -> None:
    """One WARNING line for a check that found problems (DEBUG for a clean one): the first
    problem's code as `reason` (docs/domains.md), every problem in `detail`."""
    fields: dict[str, object] = {
        "domain": result.domain,
        "mta_sts": str(result.sts.state),
        "duration": round(result.duration, 4),
    }
    found = findings(result)
    if not found:
        log.debug("domain check succeeded", extra=fields)
        return
    fields.update(
        reason=found[0].code,
        problems=len(found),
        detail="; ".join(f.text for f in found),
    )
    log.warning("domain check failed", extra=fields)


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for cancelled tasks to end; their CancelledError is expected, anything else logged."""
    if not tasks:
        return
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            log.error("domain task ended with an error", exc_info=outcome)
