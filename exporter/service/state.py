"""What the running exporter knows, shared by the scheduler (writer) and the collector (reader).

Everything lives on the event loop's thread except the collector, which reads from the HTTP
thread; it takes `snapshot()` (a shallow copy of immutable results) and never waits on a probe.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from exporter.checks.model import CheckRun
from exporter.domains.config import DomainConfig
from exporter.domains.model import DomainResult
from exporter.model import ProbeResult, Target

# The latest runs of a target's opt-in checks by address: the address for all_addresses, else None.
CheckResults = dict[str | None, tuple[CheckRun, ...]]


@dataclass(frozen=True)
class Snapshot:
    targets: tuple[Target, ...]  # the configured targets, in config order
    results: dict[str, ProbeResult]  # target name -> latest scheduled result
    probes_total: dict[str, int]  # result ("success" | "failure") -> count since start
    reload_success: bool
    reload_success_timestamp: float | None
    scheduler_lag_seconds: float  # how late the latest probe started, vs. its scheduled time
    scheduler_lag_max_seconds: float  # the largest lag since the exporter started
    domains: tuple[DomainConfig, ...] = ()  # the configured mail domains, in config order
    domain_results: dict[str, DomainResult] = field(default_factory=dict)  # name -> latest
    checks: dict[Target, CheckResults] = field(default_factory=dict)  # the opt-in checks' latest
    version: int = 0  # changes whenever anything above but the counters and lag changes


@dataclass
class ServiceState:
    targets: tuple[Target, ...] = ()
    results: dict[str, ProbeResult] = field(default_factory=dict)
    probes_total: Counter[str] = field(default_factory=Counter)
    reload_success: bool = True
    reload_success_timestamp: float | None = None
    scheduler_lag_seconds: float = 0.0
    scheduler_lag_max_seconds: float = 0.0
    domains: tuple[DomainConfig, ...] = ()
    domain_results: dict[str, DomainResult] = field(default_factory=dict)
    checks: dict[Target, CheckResults] = field(default_factory=dict)
    # Bumped by every change of targets, results, domains or checks (not by counters): an
    # exposition built at one version is still true while the version stays.
    version: int = 0
    # Called on the writer's thread with each result kept by record() (exposition.py renders
    # the target's lines then, so that no scrape has to).
    on_record: Callable[[ProbeResult], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _by_name: dict[str, Target] = field(default_factory=dict, repr=False)

    def set_targets(self, targets: tuple[Target, ...]) -> None:
        """Install a new target list; results of targets no longer configured so are dropped."""
        with self._lock:
            self.targets = targets
            # By name, so that keeping a result costs one lookup, not a scan of every target.
            self._by_name = {t.name: t for t in targets}
            # A removed target loses its series; so does a changed one until it is probed again.
            self.results = {k: v for k, v in self.results.items() if self._configured(v.target)}
            self.version += 1

    def set_domains(self, domains: tuple[DomainConfig, ...]) -> None:
        """Install a new domain list; results of domains removed or changed are dropped."""
        with self._lock:
            kept = {d.name for d in domains if d in self.domains}
            self.domains = domains
            self.domain_results = {k: v for k, v in self.domain_results.items() if k in kept}
            self.version += 1

    def record(self, result: ProbeResult, lag: float) -> None:
        with self._lock:
            # A result for a target removed (or changed) while its probe ran is not kept.
            kept = self._configured(result.target)
            if kept:
                self.results[result.target.name] = result
                self.version += 1
            self._count(result, lag)
        if kept and self.on_record is not None:
            self.on_record(result)

    def restore(self, result: ProbeResult) -> None:
        """Show an earlier result of a configured target again, uncounted: a target removed and
        added back within its interval is not probed early (manners.py), and keeps its series."""
        with self._lock:
            if self._configured(result.target):
                self.results[result.target.name] = result
                self.version += 1

    def _configured(self, target: Target) -> bool:
        return self._by_name.get(target.name) == target

    def record_mx_probe(self, result: ProbeResult, lag: float) -> None:
        """An MX probe: counted like any scheduled probe, kept in its domain's result."""
        with self._lock:
            self._count(result, lag)

    def record_domain(self, domain: DomainConfig, result: DomainResult) -> None:
        with self._lock:
            # A result for a domain removed (or changed) while it was checked is not kept.
            if domain in self.domains:
                self.domain_results[domain.name] = result
                self.version += 1

    def record_checks(
        self, target: Target, address: str | None, runs: tuple[CheckRun, ...]
    ) -> None:
        with self._lock:
            # A new dict each time: snapshots hold the old one.
            self.checks[target] = {**self.checks.get(target, {}), address: runs}
            self.version += 1

    def retain_checks(self, target: Target, addresses: Collection[str | None]) -> None:
        """Forget the check results of `target` except those of `addresses` (none: all)."""
        with self._lock:
            kept = {a: r for a, r in self.checks.get(target, {}).items() if a in addresses}
            if kept:
                self.checks[target] = kept
            else:
                self.checks.pop(target, None)
            self.version += 1

    def _count(self, result: ProbeResult, lag: float) -> None:
        self.probes_total["success" if result.success else "failure"] += 1
        self.scheduler_lag_seconds = lag
        self.scheduler_lag_max_seconds = max(self.scheduler_lag_max_seconds, lag)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                targets=self.targets,
                results=dict(self.results),
                probes_total=dict(self.probes_total),
                reload_success=self.reload_success,
                reload_success_timestamp=self.reload_success_timestamp,
                scheduler_lag_seconds=self.scheduler_lag_seconds,
                scheduler_lag_max_seconds=self.scheduler_lag_max_seconds,
                domains=self.domains,
                domain_results=dict(self.domain_results),
                checks=dict(self.checks),
                version=self.version,
            )
