"""The exporter service: flags, startup, reload, on-demand probes, signals and clean shutdown.

`serve_command(argv)` is what `smtp-tls-exporter` runs without a subcommand. The event loop (main
thread) owns the scheduler and the state; the HTTP server runs on its own thread and reaches the
loop only through `Service`'s blocking methods (`reload`, `probe`), which submit coroutines with
`asyncio.run_coroutine_threadsafe` and wait for them with a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any, TypeVar

from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.checks.model import CheckRun
from exporter.checks.run import run_checks
from exporter.config import Config, ConfigError, load_config
from exporter.domains.check import DomainChecker
from exporter.domains.config import DnsConfig, DomainConfig
from exporter.domains.fetch import Dns
from exporter.model import ProbeResult, Target, join_host_port
from exporter.probe import probe
from exporter.service.check_scheduler import CheckScheduler
from exporter.service.dane_runner import DaneRunner
from exporter.service.domain_scheduler import CheckerFactory, DomainScheduler
from exporter.service.exposition import Answer, CachedExposition, ExporterFamilies
from exporter.service.gc_tuning import tune as tune_gc
from exporter.service.http import HttpServer, ProbeAnswer, ProbeRefused
from exporter.service.logs import FORMATS, LEVELS, setup_logging
from exporter.service.malloc_tuning import tune as tune_malloc
from exporter.service.manners import Manners
from exporter.service.on_demand import choose_target, on_demand_registry
from exporter.service.resolvers import domain_dns, endpoint_resolver
from exporter.service.scheduler import ProbeFn, Scheduler, log_result
from exporter.service.service_metrics import ServiceCollector
from exporter.service.shard_metrics import ShardCollector
from exporter.service.state import ServiceState, Snapshot
from exporter.shard import Shard
from exporter.web.config import WebConfigError, describe_web_config, load_web_config
from exporter.web.guard import WebGuard

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LISTEN = ":9465"
# On-demand probes running at once; more get 429, so /probe cannot be used to flood mail servers.
ON_DEMAND_LIMIT = 4
# Taken off Prometheus' scrape timeout so the answer arrives before Prometheus gives up
# (blackbox_exporter's --timeout-offset).
SCRAPE_TIMEOUT_OFFSET = 0.5
# Extra seconds to wait for a probe beyond its own timeout (QUIT, scheduling) before giving up.
PROBE_GRACE = 5.0
RELOAD_TIMEOUT = 60.0
# The collector's own-process families, left out of a /probe answer (they describe the exporter,
# not that probe; blackbox_exporter keeps them on /metrics only).


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smtp-tls-exporter",
        description=(
            "Prometheus exporter that probes the TLS of SMTP endpoints on a schedule. "
            "(`smtp-tls-exporter probe --help` for one-shot checks.)"
        ),
    )
    p.add_argument(
        "--config.file",
        dest="config_file",
        default="config.yml",
        metavar="PATH",
        help="the YAML config file (default: %(default)s)",
    )
    p.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config file, print every problem, and exit (0 valid, 1 invalid)",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN,
        metavar="[HOST]:PORT",
        help="address to serve HTTP on; ':PORT' is every interface (default: %(default)s)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="PATH",
        help="web config in the exporter-toolkit format: TLS, basic auth, response headers, "
        "rate limit (docs/security.md); re-read when it changes",
    )
    p.add_argument(
        "--shard.count",
        dest="shard_count",
        type=int,
        default=1,
        metavar="N",
        help="split the targets and mail domains over N exporters; this one probes those of "
        "--shard.index (docs/sharding.md; default: %(default)s)",
    )
    p.add_argument(
        "--shard.index",
        dest="shard_index",
        type=int,
        default=None,
        metavar="I",
        help="this exporter's shard, 0 to N-1: the names whose Prometheus hashmod by N is I "
        "(required with --shard.count above 1)",
    )
    p.add_argument(
        "--event-loop",
        dest="event_loop",
        choices=list(EVENT_LOOPS),
        default="auto",
        help="auto: uvloop when installed (the `uvloop` extra; less CPU per probe), "
        "else asyncio's (default: %(default)s)",
    )
    p.add_argument("--log.level", dest="log_level", choices=list(LEVELS), default="info")
    p.add_argument("--log.format", dest="log_format", choices=list(FORMATS), default="logfmt")
    p.add_argument("--version", action="version", version=f"smtp-tls-exporter {__version__}")
    return p


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(name, factory) of the event loop `--event-loop` asks for. Raises ImportError when
    `uvloop` is asked for and not installed."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return f"uvloop {getattr(uvloop, '__version__', '')}".rstrip(), uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def parse_listen_address(text: str) -> tuple[str, int]:
    """`:9465` (every interface), `127.0.0.1:9465`, `[::1]:9465`, `localhost:0`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not [HOST]:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:9465")
    return host, int(port)


def serve_command(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shard = Shard.from_flags(args.shard_index, args.shard_count)
    except ValueError as exc:
        parser.error(str(exc))
    if args.config_check:
        return check_config(args.config_file, args.web_config_file, shard)
    try:
        host, port = parse_listen_address(args.listen_address)
    except ValueError as exc:
        parser.error(f"--web.listen-address: {exc}")
    try:
        loop_name, new_loop = loop_factory(args.event_loop)
    except ImportError:
        parser.error("--event-loop=uvloop: uvloop is not installed (pip install uvloop)")
    setup_logging(args.log_level, args.log_format)
    tune_malloc()  # before the config and the probes allocate (malloc_tuning.py)
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        _print_problems(args.config_file, exc)
        return 1
    web = None
    if args.web_config_file is not None:
        try:
            web = WebGuard(load_web_config(args.web_config_file), args.web_config_file)
        except WebConfigError as exc:
            _print_problems(args.web_config_file, exc, what="web config")
            return 1
    log.info("event loop", extra={"event_loop": loop_name})
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(_serve(config, args.config_file, host, port, web, shard))


def check_config(path: str, web_path: str | None = None, shard: Shard | None = None) -> int:
    """--config.check: the config file, and the web config file when one is given."""
    status = 0
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc)
        status = 1
    else:
        mine = f"; shard {shard}: {_counts(shard.part(config))}" if shard and shard.sharded else ""
        print(f"{path}: OK ({_counts(config)}{mine})")
    if web_path is not None:
        try:
            web = load_web_config(web_path)
        except WebConfigError as exc:
            _print_problems(web_path, exc, what="web config")
            status = 1
        else:
            print(f"{web_path}: OK ({describe_web_config(web)})")
    return status


def _counts(config: Config) -> str:
    """For messages: "3 targets", and ", 2 domains" when there are any."""
    text = f"{len(config.targets)} targets"
    return text + (f", {len(config.domains)} domains" if config.domains else "")


def _print_problems(path: str, exc: ConfigError | WebConfigError, what: str = "config") -> None:
    print(f"{path}: invalid {what} ({len(exc.problems)} problems):", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)


async def _serve(
    config: Config,
    config_path: str,
    host: str,
    port: int,
    web: WebGuard | None = None,
    shard: Shard | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_sighup() -> None:
        log.info("SIGHUP: reloading the config")
        task = service.request_reload()
        if task is not None:
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    def on_stop(signame: str) -> None:
        log.info("%s: shutting down", signame)
        stop.set()

    service = Service(config, config_path, shard=shard)
    if web is not None:
        service.attach_web(web)
    try:
        server = HttpServer(host, port, service, web)
    except OSError as exc:
        where = join_host_port(host or "*", port)
        log.error("cannot listen on %s: %s", where, exc.strerror or exc)
        return 1
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    try:
        async with running(service, server):
            # Start-up is done and no probe has run yet (the scheduler's timer waits for the
            # loop): freeze what start-up built, the config and a schedule entry per target.
            tune_gc()
            # Tests started on port 0 read the port from this line.
            log.info("listening on %s", join_host_port(*server.address))
            if web is not None:
                log.info(
                    "web config in force",
                    extra={
                        "web_config": web.path,
                        "web": describe_web_config(web.current().config),
                    },
                )
            await stop.wait()
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


@contextlib.asynccontextmanager
async def running(service: Service, server: HttpServer) -> AsyncIterator[None]:
    """Start the scheduler and the (bound) HTTP server; on exit stop HTTP, then every probe."""
    await service.start()
    server.start()
    try:
        yield
    finally:
        service.stopping()
        await asyncio.to_thread(server.stop)
        await service.stop()


class Service:
    """The running exporter: config, state, scheduler, registry; the HTTP layer's backend."""

    def __init__(
        self,
        config: Config,
        config_path: str,
        probe_fn: ProbeFn | None = None,
        make_checker: CheckerFactory | None = None,
        shard: Shard | None = None,
    ) -> None:
        """`probe_fn` and `make_checker` replace the real probe and domain checker in tests.

        `config` is the whole config (`/probe` may probe any of its targets); the scheduler
        and the domain checks get `shard`'s part of it."""
        self.config = config
        self.shard = shard or Shard()
        self.config_path = config_path
        self.state = ServiceState()
        # `dns:` applies to every lookup: the probes of targets and MX hosts resolve through it.
        self._resolver = endpoint_resolver(config.dns)
        self._dns: tuple[DnsConfig, Dns] | None = None  # the domain checks' DNS, built on use
        self._probe_fn = probe_fn or self._probe
        self._dane = DaneRunner(config.dane)  # each probe of a target with `dane` gets its check
        self.manners = Manners(config.host_concurrency)
        self._checks = CheckScheduler(self.state, self._run_checks)
        self._scheduler = Scheduler(
            self.state,
            concurrency=config.concurrency,
            probe_fn=self._scheduled_probe,
            manners=self.manners,
        )
        self._domains = DomainScheduler(self.state, make_checker or self._make_checker)
        # /metrics: every target's and domain's series from a cache (exposition.py), then the
        # exporter's own families, fresh at each scrape.
        own = CollectorRegistry(auto_describe=False)
        own.register(ExporterFamilies(self.state.snapshot))
        self._own_metrics = ServiceCollector(self.manners, self._count_tasks)
        own.register(self._own_metrics)
        own.register(ShardCollector(self.shard, lambda: self.config))
        self._exposition = CachedExposition(self.state, own)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False
        self._reload_lock = asyncio.Lock()
        self._reload_queued = False
        self._on_demand = threading.BoundedSemaphore(ON_DEMAND_LIMIT)
        self._on_demand_tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle, on the loop ------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exposition.start()
        owned = self.shard.part(self.config)
        await self._scheduler.update(owned.targets, self.config.concurrency)
        await self._domains.update(owned.domains, self.config.dns)
        self.state.reload_success = True
        self.state.reload_success_timestamp = time.time()
        self._ready = True
        log.info(
            "started",
            extra={
                "config": self.config_path,
                **_shard_fields(self.shard, self.config, owned),
            },
        )

    def stopping(self) -> None:
        self._ready = False

    async def stop(self) -> None:
        self._ready = False
        for task in list(self._on_demand_tasks):
            task.cancel()
        await self._domains.stop()  # first: their MX probes run in the scheduler's slots
        await self._scheduler.stop()
        await self._checks.stop()
        self._exposition.stop()

    def attach_web(self, web: WebGuard) -> None:
        """Export the state of the web config in force (`--web.config.file`)."""
        self._own_metrics.web = web

    def request_reload(self) -> asyncio.Task[tuple[bool, str]] | None:
        """Reload soon (SIGHUP). Requests that arrive while one waits to start are merged
        into it: it reads the file as it is then, so a burst of signals costs one reload or
        two, not one each."""
        if self._reload_queued:
            log.debug("a reload is already queued")
            return None
        self._reload_queued = True
        return asyncio.get_running_loop().create_task(self._queued_reload())

    async def _queued_reload(self) -> tuple[bool, str]:
        async with self._reload_lock:  # until the reload in progress, if any, is done
            self._reload_queued = False
        return await self.reload_async()

    async def reload_async(self) -> tuple[bool, str]:
        """Load the config file again; on any problem keep the running config."""
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                self.state.reload_success = False
                log.error(
                    "reload failed; keeping the running config",
                    extra={"config": self.config_path, "problems": str(exc)},
                )
                return False, f"{self.config_path}: invalid config, not loaded:\n{exc}"
            changes = {
                **_changes("", self.config.targets, config.targets),
                **_changes("domains_", self.config.domains, config.domains),
            }
            if config.dns != self.config.dns:
                self._resolver = endpoint_resolver(config.dns)
                changes["dns"] = {"changed"}
            if config.dane != self.config.dane:
                self._dane.config = config.dane
                changes["dane"] = {"changed"}
            self.manners.set_host_concurrency(config.host_concurrency)
            owned = self.shard.part(config)
            await self._scheduler.update(owned.targets, config.concurrency)
            await self._domains.update(owned.domains, config.dns)
            self.config = config
            self.state.reload_success = True
            self.state.reload_success_timestamp = time.time()
            log.info(
                "config reloaded",
                extra={
                    "config": self.config_path,
                    **_shard_fields(self.shard, config, owned),
                    **{k: ",".join(sorted(v)) for k, v in changes.items() if v},
                },
            )
            return True, f"{self.config_path}: reloaded ({_counts(config)})"

    # -- the HTTP layer's backend, called from its threads ----------------------------------

    def metrics(self, accept: str, gzip: bool) -> Answer:
        return self._exposition.answer(accept, gzip)

    def snapshot(self) -> Snapshot:
        return self.state.snapshot()

    def ready(self) -> bool:
        return self._ready

    def reload(self) -> tuple[bool, str]:
        try:
            return self._submit(self.reload_async()).result(RELOAD_TIMEOUT)
        except (concurrent.futures.CancelledError, RuntimeError):
            return False, "the exporter is shutting down"
        except TimeoutError:
            return False, f"the reload did not finish within {RELOAD_TIMEOUT:g}s"

    def probe(self, target: str, scrape_timeout: float | None, force: bool = False) -> ProbeAnswer:
        chosen = self.on_demand_target(target)
        if scrape_timeout is not None:
            budget = scrape_timeout - SCRAPE_TIMEOUT_OFFSET
            if budget <= 0:
                raise ProbeRefused(
                    HTTPStatus.BAD_REQUEST, f"scrape timeout {scrape_timeout:g}s is too short"
                )
            chosen = dataclasses.replace(chosen, timeout=min(chosen.timeout, budget))
        if not self._on_demand.acquire(blocking=False):
            raise ProbeRefused(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"{ON_DEMAND_LIMIT} on-demand probes are already running; try again later",
            )
        try:
            # Good manners (manners.py): the last result within the interval, a refusal while
            # backing off or too soon after the last forced probe, else a probe.
            decision = self.manners.on_demand(chosen, force=force)
            if decision.cached is not None:
                return ProbeAnswer(decision.cached, decision.age)
            if decision.wait > 0:
                raise ProbeRefused(
                    HTTPStatus.TOO_MANY_REQUESTS, f"{chosen.name}: {decision.why}", decision.wait
                )
            future = self._submit(self._run_on_demand(chosen))
            try:
                result = future.result(chosen.timeout + PROBE_GRACE)
            except TimeoutError:
                future.cancel()
                raise ProbeRefused(
                    HTTPStatus.GATEWAY_TIMEOUT, f"{chosen.name}: the probe did not return in time"
                ) from None
            except concurrent.futures.CancelledError:
                raise ProbeRefused(
                    HTTPStatus.SERVICE_UNAVAILABLE, "the exporter is shutting down"
                ) from None
        except RuntimeError:  # the loop is closed
            raise ProbeRefused(
                HTTPStatus.SERVICE_UNAVAILABLE, "the exporter is shutting down"
            ) from None
        finally:
            self._on_demand.release()
        log_result(result)
        return ProbeAnswer(result)

    def probe_registry(self, result: ProbeResult) -> CollectorRegistry:
        return on_demand_registry(result)

    def on_demand_target(self, spec: str) -> Target:
        return choose_target(self.config, spec)

    # -- helpers ----------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise RuntimeError("the event loop is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    async def _probe(self, target: Target) -> ProbeResult:
        return await probe(target, resolver=self._resolver)

    def _count_tasks(self) -> int | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        return len(asyncio.all_tasks(loop))

    async def _scheduled_probe(self, target: Target) -> ProbeResult:
        """A scheduled probe (of a target or an MX host) with its DANE check, then its opt-in
        checks if due."""
        result = await self._dane.probe(target, self._probe_fn)
        self._checks.after_probe(result)
        return result

    async def _run_checks(self, target: Target, address: str | None) -> tuple[CheckRun, ...]:
        # The checks' dialogues connect to the target's host too: they take one of its slots.
        async with self.manners.host_slot(target):
            return await run_checks(target, address, resolver=self._resolver)

    def _make_checker(self, domain: DomainConfig, dns_config: DnsConfig) -> DomainChecker:
        if self._dns is None or self._dns[0] != dns_config:
            self._dns = (dns_config, domain_dns(dns_config))
        return DomainChecker(
            domain.name,
            self._dns[1],
            ca_file=domain.ca_file,
            timeout=domain.timeout,
            probe_timeout=domain.timeout,
            ehlo_name=domain.ehlo_name,
            labels=dict(domain.labels),
            policy_max_interval=domain.interval,
            probe_fn=self._scheduler.probe_mx,
            all_addresses=domain.all_addresses,
            checks=domain.checks,
            dane=domain.dane,
        )

    async def _run_on_demand(self, target: Target) -> ProbeResult:
        """One on-demand probe (its start already recorded by `Manners.on_demand`)."""
        task = asyncio.current_task()
        assert task is not None
        self._on_demand_tasks.add(task)
        try:
            async with self.manners.host_slot(target):
                result = await self._dane.probe(target, self._probe_fn)
            self.manners.finished(target, result)
            return result
        finally:
            self._on_demand_tasks.discard(task)


def _shard_fields(shard: Shard, config: Config, owned: Config) -> dict[str, object]:
    """For the log: the targets and domains probed and, when sharded, the shard and the
    whole config's counts."""
    fields: dict[str, object] = {"targets": len(owned.targets), "domains": len(owned.domains)}
    if shard.sharded:
        fields["shard"] = str(shard)
        fields["config_targets"] = len(config.targets)
        fields["config_domains"] = len(config.domains)
    return fields


def _changes(
    prefix: str, old: Iterable[Target | DomainConfig], new: Iterable[Target | DomainConfig]
) -> dict[str, set[str]]:
    """Names added, removed and changed between two lists of targets (or of domains)."""
    before = {x.name: x for x in old}
    after = {x.name: x for x in new}
    return {
        f"{prefix}added": after.keys() - before.keys(),
        f"{prefix}removed": before.keys() - after.keys(),
        f"{prefix}changed": {n for n in after.keys() & before.keys() if after[n] != before[n]},
    }
