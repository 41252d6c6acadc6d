"""Good manners toward mail servers: few connections per host, spacing, back-off when pushed away.

Every probe the service runs (scheduled, of a mail domain's MX host, or on demand) goes through
one `Manners`:

- **Connections per host.** At most `host_concurrency` probes (default 2) hold a connection to one
  host at once, whatever their port or origin. The host is compared as written in the config
  (case and a trailing dot aside): two names for one address count apart. Internet.nl scans
  each MX host with one connection at a time; two lets a host's 25 and 587 be probed together.
- **Spacing.** The last start of every probe is remembered by the probe's identity (its name,
  host and port), across reloads: a target that a reload changed in some other way (timeout,
  labels, CA file) is probed again one interval after its previous probe, not at once. `/probe`
  of a target probed less than an interval ago answers with that probe's result unless forced,
  and a forced probe still waits FORCE_MIN_SPACING after the previous one.
- **Back-off.** When a server pushes the prober away (a rejected greeting such as `421 too busy`,
  or the connection dropped in the middle of the dialogue), the next probe of that host and port
  waits 2, 4, 8, ... intervals, at most BACKOFF_MAX (or one interval, when that is longer). The
  first probe that gets past that point ends the back-off. A refused connection (nothing
  listens) and a timeout do not back off: they cost the server nothing more than the probe did,
  and backing off would only delay noticing the recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from exporter.model import ProbeResult, Reason, Target

log = logging.getLogger(__name__)

DEFAULT_HOST_CONCURRENCY = 2
BACKOFF_MAX = 3600.0
FORCE_MIN_SPACING = 10.0
# Reasons that mean the server pushed the prober away (RFC 5321 section 3.8: a 421 greeting or
# a dropped connection is how a busy or rate-limiting server says "not now").
BACKOFF_REASONS = frozenset({Reason.GREETING_REJECTED, Reason.CONNECTION_CLOSED})
# Entries not touched for this long are forgotten (on-demand probes of many ports stay bounded).
_FORGET_AFTER = 2 * BACKOFF_MAX
_PRUNE_EVERY = 1000

ProbeKey = tuple[str, str, int]  # (name, host, port): a probe's identity across reloads
Endpoint = tuple[str, int]  # (host, port)


def _nothing() -> None:
    pass


def host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def probe_key(target: Target) -> ProbeKey:
    return (target.name, host_key(target.host), target.port)


def endpoint(target: Target) -> Endpoint:
    return (host_key(target.host), target.port)


def _same_definition(probed: Target | None, asked: Target) -> bool:
    """The same target, the timeout aside: /probe shortens it to fit the scrape."""
    return probed is not None and dataclasses.replace(probed, timeout=asked.timeout) == asked


class _HostSlots:
    """One host's connection slots: a FIFO semaphore whose slot can also be taken without
    waiting (`try_take`), which the scheduler needs to start a probe only when it can run."""

    __slots__ = ("_waiters", "free", "users")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.users = 0  # holders and waiters: the host's entry goes when none is left
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled
                self.give()
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter stays queued until here
                waiter.set_result(None)
                return
        self.free += 1


@dataclass
class _Last:
    started: float  # monotonic
    target: Target | None = None  # the target of `result`
    result: ProbeResult | None = None


@dataclass
class _Backoff:
    failures: int = 0  # consecutive probes pushed away
    until: float = 0.0  # monotonic: no probe of the endpoint before this
    seconds: float = 0.0  # the current back-off's length


@dataclass(frozen=True)
class OnDemand:
    """The answer to an on-demand probe: `cached` (the last result, `age` seconds old), or
    refused for `wait` seconds because `why`, or neither: probe now."""

    cached: ProbeResult | None = None
    age: float = 0.0
    wait: float = 0.0
    why: str = ""


@dataclass(frozen=True)
class BackingOff:
    """One endpoint in back-off, for the metrics."""

    host: str
    port: int
    seconds: float
    failures: int


class Manners:
    """Shared by the scheduler, the domain checks' MX probes and on-demand probes; the loop
    thread writes, the HTTP threads read (`backing_off`, `last_probe`) under a lock."""

    def __init__(
        self,
        host_concurrency: int | None = DEFAULT_HOST_CONCURRENCY,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`host_concurrency` None: no limit per host (unit tests of the scheduler)."""
        self._limit = host_concurrency
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[tuple[str, int], _HostSlots] = {}
        self._last: dict[ProbeKey, _Last] = {}
        self._backoff: dict[Endpoint, _Backoff] = {}
        self._calls = 0

    @property
    def host_concurrency(self) -> int | None:
        return self._limit

    def set_host_concurrency(self, limit: int | None) -> None:
        """From the next probe on; probes holding a slot keep it."""
        self._limit = limit

    # -- connections per host ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def host_slot(self, target: Target) -> AsyncIterator[None]:
        """Hold one of the host's connection slots for the length of the block."""
        if self._limit is None:
            yield
            return
        key, slots = self._host_slots(target)
        try:
            await slots.take()
        except BaseException:
            self._leave(key, slots, held=False)
            raise
        try:
            yield
        finally:
            self._leave(key, slots, held=True)

    def try_host_slot(self, target: Target) -> Callable[[], None] | None:
        """Take one of the host's connection slots now if one is free and nobody waits for
        one: the function that gives it back (call it once), else None."""
        if self._limit is None:
            return _nothing
        key, slots = self._host_slots(target)
        if not slots.try_take():
            self._leave(key, slots, held=False)
            return None
        return lambda: self._leave(key, slots, held=True)

    def _host_slots(self, target: Target) -> tuple[tuple[str, int], _HostSlots]:
        limit = self._limit
        assert limit is not None
        key = (host_key(target.host), limit)  # a changed limit gets fresh slots
        slots = self._hosts.get(key)
        if slots is None:
            slots = self._hosts[key] = _HostSlots(limit)
        slots.users += 1
        return key, slots

    def _leave(self, key: tuple[str, int], slots: _HostSlots, *, held: bool) -> None:
        if held:
            slots.give()
        slots.users -= 1
        if slots.users <= 0 and self._hosts.get(key) is slots:
            del self._hosts[key]

    # -- spacing ----------------------------------------------------------------------------

    def started(self, target: Target) -> None:
        """A probe of `target` starts now."""
        now = self._clock()
        with self._lock:
            self._last[probe_key(target)] = _Last(now)
            self._calls += 1
            if self._calls % _PRUNE_EVERY == 0:
                self._prune(now)

    def finished(self, target: Target, result: ProbeResult) -> None:
        """The probe of `target` started by the last `started()` returned `result`."""
        now = self._clock()
        with self._lock:
            last = self._last.setdefault(probe_key(target), _Last(now))
            last.target, last.result = target, result
            self._update_backoff(target, result, now)

    def not_before(self, target: Target) -> float:
        """The earliest monotonic time a scheduled probe of `target` may start: one interval
        after the previous probe of the same name, host and port, and after any back-off."""
        with self._lock:
            last = self._last.get(probe_key(target))
            earliest = last.started + target.interval if last is not None else 0.0
            return max(earliest, self._backoff_until(target))

    def backoff_until(self, target: Target) -> float:
        with self._lock:
            return self._backoff_until(target)

    def last_probe(self, target: Target) -> tuple[float, ProbeResult | None] | None:
        """(seconds since the last probe of `target` started, its result if that probe was of
        this very definition and has returned), or None if it was never probed."""
        with self._lock:
            last = self._last.get(probe_key(target))
            if last is None:
                return None
            result = last.result if last.target == target else None
            return self._clock() - last.started, result

    # -- on demand --------------------------------------------------------------------------

    def on_demand(
        self, target: Target, *, force: bool, min_spacing: float | None = None
    ) -> OnDemand:
        """What `/probe` of `target` does: answer from the last result, refuse for a while, or
        probe (its start is then recorded at once, so that two requests cannot both probe).
        `min_spacing` between forced probes: FORCE_MIN_SPACING unless given."""
        if min_spacing is None:
            min_spacing = FORCE_MIN_SPACING
        now = self._clock()
        key = probe_key(target)
        with self._lock:
            last = self._last.get(key)
            age = now - last.started if last is not None else math.inf
            cached = None
            if last is not None and _same_definition(last.target, target):
                cached = last.result
            hold = self._backoff_until(target) - now
            if not force and (age < target.interval or hold > 0):
                if cached is not None:
                    return OnDemand(cached, age)
                if hold > 0:
                    return OnDemand(wait=hold, why="the server pushed the prober away: backing off")
                # A probe in flight, or one of an earlier definition of the target.
                wait = min(target.interval - age, target.timeout)
                return OnDemand(wait=wait, why=f"probed {age:.0f}s ago; its result is not here")
            if force and hold > 0:
                return OnDemand(wait=hold, why="the server pushed the prober away: backing off")
            if force and age < min_spacing:
                why = f"probed {age:.0f}s ago; forced probes are {min_spacing:g}s apart at least"
                return OnDemand(wait=min_spacing - age, why=why)
            self._last[key] = _Last(now)
            return OnDemand()

    # -- back-off ---------------------------------------------------------------------------

    def _backoff_until(self, target: Target) -> float:
        b = self._backoff.get(endpoint(target))
        return b.until if b is not None else 0.0

    def _update_backoff(self, target: Target, result: ProbeResult, now: float) -> None:
        key = endpoint(target)
        b = self._backoff.get(key)
        pushed = result.failure is not None and result.failure.reason in BACKOFF_REASONS
        if pushed:
            b = b or self._backoff.setdefault(key, _Backoff())
            b.failures += 1
            cap = max(BACKOFF_MAX, target.interval)
            b.seconds = min(target.interval * 2**b.failures, cap)
            b.until = now + b.seconds
            assert result.failure is not None
            log.warning(
                "backing off",
                extra={
                    "target": target.name,
                    "reason": str(result.failure.reason),
                    "failures": b.failures,
                    "next_probe_in": round(b.seconds, 1),
                },
            )
        elif b is not None and result.success:
            del self._backoff[key]
            log.info("back-off ended", extra={"target": target.name, "failures": b.failures})

    def backing_off(self) -> list[BackingOff]:
        """The endpoints whose next probe is held back now."""
        now = self._clock()
        with self._lock:
            return [
                BackingOff(host, port, b.seconds, b.failures)
                for (host, port), b in sorted(self._backoff.items())
                if b.until > now
            ]

    def _prune(self, now: float) -> None:
        for k in [k for k, v in self._last.items() if now - v.started > _FORGET_AFTER]:
            del self._last[k]
        stale = [e for e, b in self._backoff.items() if b.until < now - _FORGET_AFTER]
        for e in stale:
            del self._backoff[e]
