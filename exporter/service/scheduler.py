"""Runs every configured target's probe on its interval and records each result in the state.

Schedule. Each target runs in its own task, so a hung target never delays another, and one task
never starts a probe before the previous one returned, so a target's probes never overlap. A
target is probed at once when the scheduler starts or the target appears (or changes) on reload.
After that it is probed on its own grid of slots

    slot(k) = epoch + (phase(name) + k) * interval

where `epoch` is the scheduler's start (monotonic clock) and `phase(name)` is a number in [0, 1)
taken from a SHA-256 of the target's name. The phase spreads targets with the same interval evenly
over it, so probes do not burst at every interval; being a hash of the name, it needs no state and
keeps an unchanged target on its grid across reloads. The next slot is the first one at least one
interval after the previous probe's slot, so no target is probed more often than its interval (the
gap after the first probe is between one and two intervals). A probe that overran a whole interval
(slow server, or waiting for a concurrency slot) is followed at once by one probe for the latest
missed slot, never by a burst of catch-up probes.

A global semaphore of `concurrency` slots bounds how many probes run at once, the MX probes of
mail domains (`probe_mx`, called by the domain scheduler) included. The lag recorded with
each result is how long after its slot the probe actually started (waiting for the semaphore
included). The probe bounds itself by the target's timeout; should it still not return within
that plus a grace period (or should it raise), the scheduler records an internal error, so a stuck
probe cannot hold a concurrency slot for ever and a broken one cannot end its target's schedule.

Every probe also goes through the service's `Manners` (manners.py): a slot of its host (taken
before the global one, so probes waiting for a busy host hold no global slot), and a record of
its start and result. A target's first probe waits until one interval after the previous probe
of the same name, host and port (so a reload that changes a target's timeout or labels does not
probe it early), and a server that pushed the prober away holds its next slot back (back-off).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable

from exporter.model import Failure, ProbeResult, Reason, Stage, Target
from exporter.probe import probe as default_probe
from exporter.service.manners import Manners
from exporter.service.state import ServiceState

log = logging.getLogger(__name__)

ProbeFn = Callable[[Target], Awaitable[ProbeResult]]

# Seconds past a target's own timeout before the scheduler gives up on a probe that ignores it.
STUCK_GRACE = 5.0


def phase(name: str) -> float:
    """The target's fixed offset into its interval, as a fraction in [0, 1)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def next_slot(epoch: float, interval: float, frac: float, previous: float, now: float) -> float:
    """The slot after `previous` (a slot or start time) on the grid `epoch + (frac + k) * interval`.

    The first slot at least one interval after `previous`; when that one has already passed,
    the latest slot not after `now` instead, to be run at once.
    """
    base = epoch + frac * interval
    # The tolerance keeps a `previous` that sits on the grid (give or take rounding) on it.
    k = math.ceil((previous + interval - base) / interval - 1e-9)
    slot = base + k * interval
    if slot < now:
        slot = base + math.floor((now - base) / interval) * interval
    return slot


class Scheduler:
    """Owns one task per target; `update()` installs a new target list, `stop()` ends them all."""

    def __init__(
        self,
        state: ServiceState,
        *,
        concurrency: int,
        probe_fn: ProbeFn = default_probe,
        stuck_grace: float = STUCK_GRACE,
        manners: Manners | None = None,
    ) -> None:
        """`manners` default: spacing and back-off without a limit per host."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._state = state
        self._probe_fn = probe_fn
        self._clock = time.monotonic
        self._stuck_grace = stuck_grace
        self._manners = manners if manners is not None else Manners(None)
        self._epoch = self._clock()
        self._concurrency = concurrency
        self._semaphore = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, tuple[Target, asyncio.Task[None]]] = {}
        self._stopped = False

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(target for target, _ in self._tasks.values())

    async def update(self, targets: Iterable[Target], concurrency: int | None = None) -> None:
        """Install `targets`: start new and changed ones at once, stop removed ones.

        Unchanged targets keep their task and their place on the grid. The state's target list
        (and so the series the collector exports) follows at once; results of removed targets
        are dropped.
        """
        if self._stopped:
            raise RuntimeError("the scheduler has been stopped")
        wanted = {t.name: t for t in targets}
        if concurrency is not None and concurrency != self._concurrency:
            if concurrency < 1:
                raise ValueError("concurrency must be at least 1")
            # Probes already waiting keep the old semaphore; every later probe takes the new one.
            self._concurrency = concurrency
            self._semaphore = asyncio.Semaphore(concurrency)
        self._state.set_targets(tuple(wanted.values()))
        ending: list[asyncio.Task[None]] = []
        for name, (old, task) in list(self._tasks.items()):
            if wanted.get(name) != old:
                task.cancel()
                ending.append(task)
                del self._tasks[name]
        kept, self._tasks = self._tasks, {}
        for name, target in wanted.items():  # in the order given, as `targets` reports them
            if name in kept:
                self._tasks[name] = kept[name]
            else:
                task = asyncio.create_task(self._run(target), name=f"probe {name}")
                self._tasks[name] = (target, task)
        await _finish(ending)

    async def stop(self) -> None:
        """Cancel every target's task and wait until they have ended (sockets closed)."""
        self._stopped = True
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await _finish(tasks)

    async def _run(self, target: Target) -> None:
        frac = phase(target.name)
        now = self._clock()
        slot = max(now, self._manners.not_before(target))
        if slot > now:  # probed less than an interval ago: show that result meanwhile, if any
            last = self._manners.last_probe(target)
            if last is not None and last[1] is not None:
                self._state.restore(last[1])
        while True:
            await self._sleep_until(slot)
            await self._probe_once(target, slot)
            now = self._clock()
            slot = next_slot(self._epoch, target.interval, frac, slot, now)
            hold = self._manners.backoff_until(target)
            if hold > slot:  # the first slot of the grid at or after the back-off
                slot = next_slot(self._epoch, target.interval, frac, hold - target.interval, now)

    async def _sleep_until(self, when: float) -> None:
        delay = when - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _probe_once(self, target: Target, slot: float) -> None:
        async with self._manners.host_slot(target), self._semaphore:
            lag = max(0.0, self._clock() - slot)
            result = await self._guarded_probe(target)
        self._state.record(result, lag)
        log_result(result, lag)

    async def probe_mx(self, target: Target) -> ProbeResult:
        """Probe a mail domain's MX host now, as a scheduled probe: in a concurrency slot, with
        the stuck-probe guard, counted and logged. Its lag is the wait for the slot."""
        asked = self._clock()
        async with self._manners.host_slot(target), self._semaphore:
            lag = max(0.0, self._clock() - asked)
            result = await self._guarded_probe(target)
        self._state.record_mx_probe(result, lag)
        log_result(result, lag)
        return result

    async def _guarded_probe(self, target: Target) -> ProbeResult:
        self._manners.started(target)
        result = await self._bounded(target)
        self._manners.finished(target, result)
        return result

    async def _bounded(self, target: Target) -> ProbeResult:
        started_at = time.time()
        try:
            async with asyncio.timeout(target.timeout + self._stuck_grace):
                return await self._probe_fn(target)
        except TimeoutError:
            log.error(
                "probe ignored its timeout and was cancelled",
                extra={"target": target.name, "timeout": target.timeout},
            )
            detail = f"the probe did not return within its {target.timeout:g}s timeout"
        except Exception as exc:
            log.exception("probe raised", extra={"target": target.name})
            detail = f"{type(exc).__name__}: {exc}"
        return ProbeResult(
            target=target,
            started_at=started_at,
            success=False,
            failure=Failure(Stage.INTERNAL, Reason.INTERNAL_ERROR, detail),
        )


def log_result(result: ProbeResult, lag: float | None = None) -> None:
    """One WARNING line for a failed probe (DEBUG for a good one), then the transcript at DEBUG."""
    debug = log.isEnabledFor(logging.DEBUG)
    if result.failure is None and not debug:
        return  # the usual case: nothing to log, so nothing to build
    target = result.target
    fields: dict[str, object] = {"target": target.name}
    domain = dict(target.labels).get("domain")
    if domain is not None:  # the probe of a mail domain's MX host
        fields["domain"] = domain
    if lag is not None:
        fields["lag"] = round(lag, 3)
    fields["duration"] = round(result.phases.total, 4)
    if result.failure is not None:
        f = result.failure
        fields.update(stage=str(f.stage), reason=str(f.reason), detail=f.detail)
        log.warning("probe failed", extra=fields)
    else:
        log.debug("probe succeeded", extra=fields)
    if debug and result.transcript:
        lines = [f"{e.at:8.4f} {e.kind:<4} {e.text}" for e in result.transcript]
        log.debug("transcript", extra={"target": target.name, "transcript": "\n".join(lines)})


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for cancelled tasks to end; their CancelledError is expected, anything else logged."""
    if not tasks:
        return
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            log.error("probe task ended with an error", exc_info=outcome)
