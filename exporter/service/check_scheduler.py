"""Runs the opt-in checks (exporter.checks) of every probed target on their own, longer interval.

The scheduler hands over each scheduled probe's result, of configured targets and MX hosts alike
(`after_probe`). Checks are due at a target's first probe, then at the probe nearest to
`checks.interval` after their last run, and at once for an address that appeared since
(`all_addresses`). They connect where the probe did: each address of an all_addresses target, or
the address the probe reached (resolved afresh when it reached none). A run replaces the
results of its addresses in the state, where they stay until the next run. The collector shows
them with the latest probe's addresses only, and this scheduler forgets the others, so an
address that leaves DNS loses its check series with the rest.

Each due target's checks run in a task of their own, one dialogue after the other; at most
CHECKS_AT_ONCE targets at once. They take no probe concurrency slot (as domain checks take none):
each dialogue is bounded by the target's timeout. A target no longer probed (removed, changed by a
reload, or an MX host that left its domain) is forgotten after a few of its probe intervals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from exporter.checks.model import CheckRun
from exporter.checks.run import enabled_checks
from exporter.model import ProbeResult, Stage, Target
from exporter.service.state import ServiceState

log = logging.getLogger(__name__)

CHECKS_AT_ONCE = 4
# A target not probed for this many of its intervals (and at least FORGET_AFTER seconds) is gone.
FORGET_INTERVALS = 3
FORGET_AFTER = 3600.0

RunChecks = Callable[[Target, str | None], Awaitable[tuple[CheckRun, ...]]]
# (address key in the results, address to connect to): the key is None unless all_addresses.
_Work = list[tuple[str | None, str | None]]


@dataclass
class _Entry:
    target: Target
    last_seen: float  # monotonic time of the latest probe
    cadence: float = 0.0  # seconds between the latest two probes
    last_run: float | None = None  # monotonic start of the latest full run
    done: set[str | None] = field(default_factory=set)  # address keys with results
    task: asyncio.Task[None] | None = None


class CheckScheduler:
    """`after_probe()` after every scheduled probe; `stop()` ends the runs in flight."""

    def __init__(
        self,
        state: ServiceState,
        run_fn: RunChecks,
        *,
        at_once: int = CHECKS_AT_ONCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._run_fn = run_fn
        self._clock = clock
        self._slots = asyncio.Semaphore(at_once)
        self._entries: dict[Target, _Entry] = {}
        self._stopped = False

    def after_probe(self, result: ProbeResult) -> None:
        """Start the target's checks in the background if they are due."""
        now = self._clock()
        self._forget_idle(now)
        target = result.target
        if self._stopped or not enabled_checks(target):
            return
        entry = self._entries.get(target)
        if entry is None:
            entry = self._entries[target] = _Entry(target, now)
        else:
            entry.cadence, entry.last_seen = now - entry.last_seen, now
        work = _work(result)
        if target.all_addresses:
            keys = {key for key, _ in work}
            entry.done &= keys
            self._state.retain_checks(target, keys)
        if not work or (entry.task is not None and not entry.task.done()):
            return
        interval = target.checks.interval
        if entry.last_run is None or now - entry.last_run + entry.cadence / 2 >= interval:
            entry.last_run = now
        else:
            work = [(key, address) for key, address in work if key not in entry.done]
            if not work:
                return
        entry.task = asyncio.create_task(self._run(entry, work), name=f"checks {target.name}")

    async def _run(self, entry: _Entry, work: _Work) -> None:
        async with self._slots:
            for key, address in work:
                try:
                    runs = await self._run_fn(entry.target, address)
                except Exception:
                    log.exception("checks raised", extra={"target": entry.target.name})
                    continue
                self._state.record_checks(entry.target, key, runs)
                entry.done.add(key)

    def _forget_idle(self, now: float) -> None:
        for target, entry in list(self._entries.items()):
            idle_limit = max(FORGET_INTERVALS * max(entry.cadence, target.interval), FORGET_AFTER)
            if now - entry.last_seen > idle_limit:
                if entry.task is not None:
                    entry.task.cancel()
                del self._entries[target]
                self._state.retain_checks(target, ())

    async def settle(self) -> None:
        """Wait until the runs in flight have ended."""
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel every run in flight and wait until they have ended (sockets closed)."""
        self._stopped = True
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                log.error("check task ended with an error", exc_info=outcome)


def _work(result: ProbeResult) -> _Work:
    """Where the checks of this probe's target connect, keyed as the results are."""
    if result.target.all_addresses:
        return [(r.peer_address, r.peer_address) for r in result.addresses if r.peer_address]
    failure = result.failure
    reached = failure is None or failure.stage not in (Stage.RESOLVE, Stage.CONNECT)
    return [(None, result.peer_address if reached else None)]
