"""The bench: smtp-tls-exporter next to blackbox_exporter and openssl s_time, on loopback only.

    python3 bench/run.py [--quick] [--out DIR]

Starts the peers (the scripted server over thousands of 127.B.x.y endpoints, and the tests' real
Postfix), measures the native floor and blackbox_exporter, runs the exporter's real CLI at a fixed
rate and then with 100, 1,000 and 10,000 targets, and prints one table. bench/README.md explains
every figure; docs/performance.md holds a run's table.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import blackbox, peers  # noqa: E402
from bench.measure import (  # noqa: E402
    HttpConnection,
    cpu_seconds,
    machine,
    median,
    memory,
    percentile,
    wait_for_line,
)
from bench.peers import Endpoint, ScriptedServer  # noqa: E402
from exporter.service.scheduler import phase  # noqa: E402
from tests.fixtures.certs import SERVER_NAME  # noqa: E402

ON_TIME_TOLERANCE = 1.0  # seconds after its slot within which a probe counts as on time
CONCURRENCY = 100


@dataclass(frozen=True)
class Plan:
    """How long and how large each part of the bench is."""

    endpoints: int
    scale: tuple[int, ...]  # target counts of the scale runs
    scale_interval: float
    scrape_period: float  # steady-state scrape period in the scale runs
    rate_targets: int  # targets of the fixed-rate runs, probed every rate_interval
    rate_interval: float
    postfix_targets: int  # names for Postfix's one listener, probed every rate_interval
    native_seconds: float


PARTS = ("native", "blackbox", "rate", "scale")
FULL = Plan(10_000, (100, 1_000, 10_000), 60.0, 15.0, 1_000, 10.0, 300, 10.0)
QUICK = Plan(2_000, (100, 1_000), 20.0, 5.0, 500, 5.0, 150, 5.0)


# -- the exporter as a subprocess --------------------------------------------------------------


def write_exporter_config(
    path: Path, targets: list[tuple[str, Endpoint]], interval: float, ca_file: str
) -> None:
    lines = [
        "defaults:",
        f"  interval: {interval:g}s",
        f"  timeout: {min(10.0, interval):g}s",
        f"  concurrency: {CONCURRENCY}",
        "  ehlo_name: bench.example",
        f"  ca_file: {ca_file}",
        "targets:",
    ]
    for name, ep in targets:
        lines.append(
            f"  - {{name: '{name}', host: {ep.host}, port: {ep.port}, mode: {ep.mode}, "
            f"server_name: {SERVER_NAME}}}"
        )
    path.write_text("\n".join(lines) + "\n")


class Exporter:
    """`smtp-tls-exporter` (the real CLI) on 127.0.0.1, its log in a file."""

    def __init__(self, config: Path, log: Path, *, uvloop: bool = False) -> None:
        args = [f"--config.file={config}", "--web.listen-address=127.0.0.1:0", "--log.level=info"]
        # The exporter's default (--event-loop=auto) is uvloop when installed: ask explicitly.
        args.append(f"--event-loop={'uvloop' if uvloop else 'asyncio'}")
        cmd = [sys.executable, "-m", "exporter", *args]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        self.pid = self.proc.pid
        self.port = 0
        self.started = time.monotonic()

    async def ready(self) -> None:
        line = await wait_for_line(str(self.log), "listening on", 120, self.pid)
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match is None:
            raise RuntimeError(f"cannot read the port from {line!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Scrape:
    at: float
    seconds: float
    gzip: bool
    size: int
    full_load: bool


@dataclass
class Watch:
    """What the bench saw while one exporter ran: CPU and memory samples, accepts, scrapes."""

    pid: int
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # t, cpu s, rss
    accepts: list[tuple[int, float]] = field(default_factory=list)  # endpoint index, t
    first: dict[int, float] = field(default_factory=dict)  # endpoint index -> first accept
    scrapes: list[Scrape] = field(default_factory=list)
    last_plain: bytes = b""
    hwm: int = 0

    def sample(self, server: ScriptedServer | None) -> None:
        now = time.monotonic()
        try:
            cpu = cpu_seconds(self.pid)
            rss, hwm = memory(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            return
        self.samples.append((now, cpu, rss))
        self.hwm = max(self.hwm, hwm)
        if server is not None:
            _, log = server.drain()
            for index, t in log:
                self.accepts.append((index, t))
                self.first.setdefault(index, t)

    def cpu_at(self, t: float) -> float:
        """CPU seconds at time t, interpolated between samples."""
        times = [s[0] for s in self.samples]
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return self.samples[0][1]
        if i >= len(self.samples):
            return self.samples[-1][1]
        (t0, c0, _), (t1, c1, _) = self.samples[i - 1], self.samples[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def accepts_between(self, a: float, b: float) -> int:
        return sum(1 for _, t in self.accepts if a <= t < b)


async def sampler(watch: Watch, server: ScriptedServer | None, stop: asyncio.Event) -> None:
    while not stop.is_set():
        watch.sample(server)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    watch.sample(server)


async def scrape(watch: Watch, port: int, gzip: bool, full_load: bool) -> None:
    conn = HttpConnection("127.0.0.1", port)
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    at = time.monotonic()
    try:
        r = await conn.get("/metrics", headers)
    finally:
        conn.close()
    watch.scrapes.append(Scrape(at, r.seconds, gzip, len(r.body), full_load))
    if not gzip:
        watch.last_plain = r.body


def probes_counted(body: bytes) -> dict[str, float]:
    out = {}
    for m in re.finditer(rb'smtp_tls_exporter_probes_total\{result="(\w+)"\} ([\d.e+]+)', body):
        out[m.group(1).decode()] = float(m.group(2))
    return out


# -- the parts of the bench --------------------------------------------------------------------


@dataclass
class CpuRow:
    client: str
    peer: str
    mode: str
    rate: str
    probes: int
    failed: int
    cpu_ms: float  # client CPU per probe, milliseconds
    note: str = ""


def _wait4(proc: subprocess.Popen[bytes]) -> tuple[bytes, float]:
    out = proc.stdout.read() if proc.stdout else b""
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here; Popen must not wait for it again
    return out, usage.ru_utime + usage.ru_stime


def s_time(ep: Endpoint, ca_file: str, seconds: float, peer: str) -> CpuRow:
    """openssl s_time: new TLS handshakes back to back, chain verified; CPU from its rusage."""
    proc = subprocess.Popen(
        [
            "openssl",
            "s_time",
            "-connect",
            f"{ep.host}:{ep.port}",
            "-new",
            "-time",
            str(int(seconds)),
            "-CAfile",
            ca_file,
            "-verify",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    out, cpu = _wait4(proc)
    match = re.search(rb"(\d+) connections in [\d.]+ real seconds", out)
    count = int(match.group(1)) if match else 0
    return CpuRow(
        "openssl s_time -new (native floor)",
        peer,
        "TLS handshake only",
        "max",
        count,
        0,
        1000 * cpu / count if count else float("nan"),
    )


def pyloop(ep: Endpoint, ca_file: str, seconds: float, peer: str) -> CpuRow:
    """bench/pyloop.py: sequential blocking STARTTLS dialogues in Python; CPU from rusage."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "pyloop.py"),
            ep.host,
            str(ep.port),
            SERVER_NAME,
            ca_file,
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    out, cpu = _wait4(proc)
    count = int(out.strip() or 0)
    # Interpreter start-up (about 20 ms) is included; over thousands of dialogues it is noise.
    return CpuRow(
        "python blocking ssl (reference)",
        peer,
        "starttls",
        "max",
        count,
        0,
        1000 * cpu / count if count else float("nan"),
    )


async def blackbox_rate(
    bb: blackbox.Blackbox,
    module: str,
    targets: list[Endpoint],
    rate: float,
    seconds: float,
    peer: str,
    mode: str,
    version: str,
) -> CpuRow:
    hosts = [f"{ep.host}:{ep.port}" for ep in targets]
    await blackbox.drive(bb.port, module, hosts, rate, 2.0)  # warm-up, not measured
    cpu0 = cpu_seconds(bb.pid)
    result = await blackbox.drive(bb.port, module, hosts, rate, seconds)
    cpu = cpu_seconds(bb.pid) - cpu0
    done = result.ok + result.failed
    note = f"rate not held: {result.skipped} skipped" if result.skipped else ""
    return CpuRow(
        f"blackbox_exporter {version}",
        peer,
        mode,
        f"{rate:g}/s",
        done,
        result.failed,
        1000 * cpu / done if done else float("nan"),
        note,
    )


async def exporter_rate(
    workdir: Path,
    label: str,
    targets: list[tuple[str, Endpoint]],
    interval: float,
    ca_file: str,
    server: ScriptedServer | None,
    peer: str,
    mode: str,
    uvloop: bool = False,
) -> CpuRow:
    """The exporter probing len(targets) targets every `interval`: CPU over two steady intervals.

    The window starts one interval after the first probe (the start-up round is left out) and
    lasts two intervals, so in it each target is probed twice when on time. Probes are counted at
    the scripted server; against Postfix, which the bench cannot count, as 2 per target.
    """
    cfg = workdir / f"rate-{label}.yml"
    write_exporter_config(cfg, targets, interval, ca_file)
    if server is not None:
        server.drain()
    exp = Exporter(cfg, workdir / f"rate-{label}.log", uvloop=uvloop)
    watch = Watch(exp.pid)
    stop = asyncio.Event()
    task = asyncio.create_task(sampler(watch, server, stop))
    try:
        await exp.ready()
        t0 = time.monotonic()
        while server is not None and not watch.first and time.monotonic() < t0 + 30:
            await asyncio.sleep(0.05)
        epoch = min(watch.first.values()) if watch.first else t0
        a, b = epoch + interval + 1.0, epoch + 3 * interval + 1.0
        await asyncio.sleep(max(0.0, b + 0.3 - time.monotonic()))
        await scrape(watch, exp.port, gzip=False, full_load=False)
    finally:
        stop.set()
        await task
        exp.stop()
    cpu = watch.cpu_at(b) - watch.cpu_at(a)
    probes = watch.accepts_between(a, b) if server is not None else 2 * len(targets)
    counted = probes_counted(watch.last_plain)
    rate = len(targets) / interval
    return CpuRow(
        f"smtp-tls-exporter ({'uvloop' if uvloop else 'asyncio'})",
        peer,
        mode,
        f"{rate:g}/s",
        probes,
        int(counted.get("failure", 0)),
        1000 * cpu / probes if probes else float("nan"),
    )


@dataclass
class ScaleRow:
    targets: int
    interval: float
    full_load_probes_per_s: float
    full_load_cpu_ms: float
    full_load_seconds: float
    stall_max_ms: float  # longest pause in new connections while scraped at full load
    # The same over the first half of the round, which nobody scrapes: what a scrape adds to
    # the pauses that happen anyway (full garbage collections).
    gap_unscraped_ms: float
    steady_cores: float
    steady_cpu_ms: float
    on_time_pct: float
    slots: int
    lag_p99_s: float
    lag_max_s: float
    rss_mb: float  # peak resident set (VmHWM)
    rss_end_mb: float
    metrics_p50_ms: float  # gzip answers, as Prometheus asks
    metrics_p99_ms: float
    metrics_plain_p99_ms: float
    metrics_full_load_p99_ms: float
    scrapes: int
    body_plain_kb: float
    body_gzip_kb: float
    failures: int
    probes: int
    scrape_log: list[tuple[float, float, bool, int, bool]] = field(default_factory=list)


async def scale_run(
    workdir: Path, n: int, plan: Plan, server: ScriptedServer, ca_file: str
) -> ScaleRow:
    interval = plan.scale_interval
    eps = server.endpoints[:n]
    cfg = workdir / f"scale-{n}.yml"
    write_exporter_config(cfg, [(f"{ep.host}:{ep.port}", ep) for ep in eps], interval, ca_file)
    server.drain()
    exp = Exporter(cfg, workdir / f"scale-{n}.log")
    watch = Watch(exp.pid)
    stop = asyncio.Event()
    task = asyncio.create_task(sampler(watch, server, stop))
    try:
        await exp.ready()
        # Round one: every target is due at once. The first half runs unobserved (throughput
        # and CPU), the second half under back-to-back scrapes (latency and stalls at full load).
        deadline = time.monotonic() + 3 * interval
        while len(watch.first) < n // 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        gz = False
        while len(watch.first) < n and time.monotonic() < deadline:
            await scrape(watch, exp.port, gzip=gz, full_load=True)
            gz = not gz
            await asyncio.sleep(0.5)
        epoch0 = min(watch.first.values())
        end = epoch0 + 2 * interval + ON_TIME_TOLERANCE + 3.0
        next_scrape = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_scrape:
                await scrape(watch, exp.port, gzip=gz, full_load=False)
                gz = not gz
                next_scrape += plan.scrape_period
            await asyncio.sleep(min(0.2, max(0.0, end - time.monotonic())))
        await scrape(watch, exp.port, gzip=not gz, full_load=False)
        await scrape(watch, exp.port, gzip=False, full_load=False)
    finally:
        stop.set()
        await task
        exp.stop()
    return analyse_scale(watch, eps, interval)


def analyse_scale(watch: Watch, eps: list[Endpoint], interval: float) -> ScaleRow:
    n = len(eps)
    names = {ep.index: f"{ep.host}:{ep.port}" for ep in eps}
    firsts = sorted(watch.first.values())
    t_first, t_half = firsts[0], firsts[max(0, n // 2 - 1)]
    t_round = firsts[-1]
    half = max(1, n // 2)
    span = t_half - t_first
    fl_rate = (half - 1) / span if span > 0 else float("nan")
    fl_cpu = (watch.cpu_at(t_half) - watch.cpu_at(t_first)) / half
    times = sorted(t for _, t in watch.accepts if t_half <= t <= t_round)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    stall = max(gaps) if gaps else 0.0
    before = sorted(t for _, t in watch.accepts if t_first <= t <= t_half)
    gap_unscraped = max((b - a for a, b in itertools.pairwise(before)), default=0.0)

    # The scheduler's grid: slot_k = epoch + (phase(name) + k) * interval. The epoch is estimated
    # as the one that makes the earliest probe after round one exactly on time.
    fracs = {i: phase(names[i]) for i in names}
    offsets = []
    for index, t in watch.accepts:
        if t > watch.first[index] + interval / 2:
            rel = (t - t_first) / interval - fracs[index]
            offsets.append(t - (t_first + (fracs[index] + round(rel)) * interval))
    epoch = t_first + (min(offsets) if offsets else 0.0)
    a, b = epoch + interval + 2.0, epoch + 2 * interval + 2.0
    by_target: dict[int, list[float]] = {}
    for index, t in watch.accepts:
        by_target.setdefault(index, []).append(t)
    lags = []
    for index in names:
        starts = sorted(by_target.get(index, []))
        k = int((a - epoch) / interval - fracs[index]) - 1
        while True:
            slot = epoch + (fracs[index] + k) * interval
            k += 1
            if slot < a:
                continue
            if slot >= b:
                break
            j = bisect.bisect_left(starts, slot - 0.05)
            lags.append(starts[j] - slot if j < len(starts) else float("inf"))
    on_time = sum(1 for lag in lags if lag <= ON_TIME_TOLERANCE)
    steady_cpu = watch.cpu_at(b) - watch.cpu_at(a)
    steady_probes = watch.accepts_between(a, b)
    full = [s.seconds for s in watch.scrapes if s.full_load]
    every = [s.seconds for s in watch.scrapes if s.gzip]
    plain_times = [s.seconds for s in watch.scrapes if not s.gzip]
    plain = [s.size for s in watch.scrapes if not s.gzip]
    gzipped = [s.size for s in watch.scrapes if s.gzip]
    counted = probes_counted(watch.last_plain)
    return ScaleRow(
        targets=n,
        interval=interval,
        full_load_probes_per_s=fl_rate,
        full_load_cpu_ms=1000 * fl_cpu,
        full_load_seconds=t_round - t_first,
        stall_max_ms=1000 * stall,
        gap_unscraped_ms=1000 * gap_unscraped,
        steady_cores=steady_cpu / (b - a),
        steady_cpu_ms=1000 * steady_cpu / steady_probes if steady_probes else float("nan"),
        on_time_pct=100 * on_time / len(lags) if lags else float("nan"),
        slots=len(lags),
        lag_p99_s=percentile(lags, 99),
        lag_max_s=max(lags) if lags else float("nan"),
        rss_mb=watch.hwm / 2**20,
        rss_end_mb=(watch.samples[-1][2] if watch.samples else 0) / 2**20,
        metrics_p50_ms=1000 * median(every),
        metrics_p99_ms=1000 * percentile(every, 99),
        metrics_plain_p99_ms=1000 * percentile(plain_times, 99),
        metrics_full_load_p99_ms=1000 * percentile(full, 99),
        scrapes=len(watch.scrapes),
        body_plain_kb=(plain[-1] if plain else 0) / 1024,
        body_gzip_kb=(gzipped[-1] if gzipped else 0) / 1024,
        failures=int(counted.get("failure", 0)),
        probes=int(sum(counted.values())),
        # (seconds after the first probe, latency, gzip, size, during the start-up round)
        scrape_log=[
            (round(s.at - t_first, 3), round(s.seconds, 4), s.gzip, s.size, s.full_load)
            for s in watch.scrapes
        ],
    )


def merge_rounds(rounds: list[list[CpuRow]]) -> list[CpuRow]:
    """One row per client, peer and mode: the median of its rounds' CPU per probe (the machine is
    shared: single rounds move by 10 to 30%), probes and failures summed, the range noted."""
    if len(rounds) == 1:
        return rounds[0]
    merged = []
    for first in rounds[0]:
        same = [
            r
            for rows in rounds
            for r in rows
            if (r.client, r.peer, r.mode) == (first.client, first.peer, first.mode)
        ]
        values = sorted(r.cpu_ms for r in same)
        notes = "; ".join(sorted({r.note for r in same if r.note}))
        spread = f"{len(values)} rounds {values[0]:.3f}-{values[-1]:.3f}"
        merged.append(
            CpuRow(
                first.client,
                first.peer,
                first.mode,
                first.rate,
                sum(r.probes for r in same),
                sum(r.failed for r in same),
                statistics.median(values),
                f"{spread}; {notes}" if notes else spread,
            )
        )
    return merged


# -- the table ---------------------------------------------------------------------------------


def _f(value: float, fmt: str) -> str:
    return "-" if value != value else format(value, fmt)  # NaN -> "-"


def render(meta: dict[str, Any], cpu: list[CpuRow], scale: list[ScaleRow]) -> str:
    m = meta["machine"]
    out = [
        f"smtp-tls-exporter bench ({meta['plan']}), {meta['date']}",
        f"machine: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, "
        f"{m['openssl']} (s_time), {m.get('probe_openssl', '?')} (the exporter's probes); "
        f"load average at start {m['loadavg']}",
        f"peers: scripted server ({meta['server']}), Postfix {meta.get('postfix', 'skipped')}; "
        f"blackbox_exporter {meta.get('blackbox', 'skipped')}",
        "",
        "CPU per probe of the client process alone (utime+stime from /proc or rusage)",
    ]
    floor = {r.peer: r.cpu_ms for r in cpu if r.client.startswith("openssl")}
    bb = {(r.peer, r.mode): r.cpu_ms for r in cpu if r.client.startswith("blackbox")}
    head = (
        f"{'client':<36} {'peer':<14} {'mode':<18} {'rate':>6} {'probes':>7} {'fail':>5} "
        f"{'ms/probe':>8} {'/blackbox':>9} {'/native':>8}"
    )
    out += [head, "-" * len(head)]
    for r in cpu:
        ratio_bb = r.cpu_ms / bb[(r.peer, r.mode)] if (r.peer, r.mode) in bb else float("nan")
        ratio_native = r.cpu_ms / floor[r.peer] if r.peer in floor else float("nan")
        out.append(
            f"{r.client:<36} {r.peer:<14} {r.mode:<18} {r.rate:>6} {r.probes:>7} {r.failed:>5} "
            f"{_f(r.cpu_ms, '.3f'):>8} {_f(ratio_bb, '.2f'):>9} {_f(ratio_native, '.2f'):>8}"
            + (f"  {r.note}" if r.note else "")
        )
    out += [
        "",
        f"Scale: smtp-tls-exporter, scripted peers (3/4 STARTTLS, 1/4 implicit TLS), concurrency "
        f"{CONCURRENCY}, on time = started within {ON_TIME_TOLERANCE:g} s of its slot",
    ]
    head = (
        f"{'targets':>7} {'interval':>8} {'full-load':>10} {'ms/probe':>8} {'stall':>9} "
        f"{'steady':>7} {'ms/probe':>8} {'on-time':>8} {'lag p99':>8} {'RSS':>6} "
        f"{'gzip p50/p99':>13} {'plain':>6} {'full-load':>9} {'body plain/gzip':>16} {'fail':>5}"
    )
    unit = (
        f"{'':>7} {'s':>8} {'probes/s':>10} {'(full)':>8} {'ms s/u':>9} {'cores':>7} "
        f"{'(steady)':>8} "
        f"{'%':>8} {'s':>8} {'MB':>6} {'ms':>13} {'p99':>6} {'p99 ms':>9} {'KB':>16} {'':>5}"
    )
    out += [head, unit, "-" * len(head)]
    for s in scale:
        out.append(
            f"{s.targets:>7} {s.interval:>8g} {_f(s.full_load_probes_per_s, '.0f'):>10} "
            f"{_f(s.full_load_cpu_ms, '.2f'):>8} "
            f"{_f(s.stall_max_ms, '.0f') + '/' + _f(s.gap_unscraped_ms, '.0f'):>9} "
            f"{s.steady_cores:>7.3f} {_f(s.steady_cpu_ms, '.2f'):>8} "
            f"{_f(s.on_time_pct, '.2f'):>8} {_f(s.lag_p99_s, '.3f'):>8} {s.rss_mb:>6.0f} "
            f"{_f(s.metrics_p50_ms, '.0f') + '/' + _f(s.metrics_p99_ms, '.0f'):>13} "
            f"{_f(s.metrics_plain_p99_ms, '.0f'):>6} "
            f"{_f(s.metrics_full_load_p99_ms, '.0f'):>9} "
            f"{f'{s.body_plain_kb:.0f}/{s.body_gzip_kb:.0f}':>16} {s.failures:>5}"
        )
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _maybe_postfix(enabled: bool) -> Iterator[peers.PostfixPeer | None]:
    if not enabled:
        yield None
        return
    with peers.postfix() as pf:
        yield pf


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _bench(
    args: argparse.Namespace, plan: Plan, workdir: Path, pki: peers.Pki, server: ScriptedServer
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "plan": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
    }
    eps = server.endpoints
    meta["server"] = (
        f"{len(eps)} endpoints on 127.{args.subnet}.x.y ports {peers.PORTS}, "
        f"{args.workers} processes{'' if args.no_uvloop_server else ', uvloop if installed'}"
    )
    cpu: list[CpuRow] = []
    scale: list[ScaleRow] = []
    starttls = [ep for ep in eps if not ep.implicit][: plan.rate_targets]
    implicit = [ep for ep in eps if ep.implicit][: plan.rate_targets]
    rate = plan.rate_targets / plan.rate_interval
    measure_s = 2 * plan.rate_interval
    parts = set(args.parts.split(","))
    with _maybe_postfix(not args.no_postfix) as pf:
        if pf is not None:
            meta["postfix"] = pf.version
        rounds: list[list[CpuRow]] = []
        for round_no in range(args.repeat):
            if args.repeat > 1:
                _say(f"CPU parts, round {round_no + 1} of {args.repeat}")
            cpu = []
            if "native" in parts:
                _say("native floor: openssl s_time, python blocking loop")
                cpu.append(s_time(implicit[0], pki.ca_file, plan.native_seconds, "scripted"))
                cpu.append(pyloop(starttls[0], pki.ca_file, plan.native_seconds, "scripted"))
                if pf is not None:
                    cpu.append(s_time(pf.implicit, pf.ca_file, plan.native_seconds, "postfix"))

            bb_path = None if args.no_blackbox or "blackbox" not in parts else blackbox.binary()
            if bb_path is None:
                if "blackbox" in parts and not args.no_blackbox:
                    _say(
                        "blackbox_exporter: not installed "
                        "(apt-get install prometheus-blackbox-exporter)"
                    )
            else:
                version = blackbox.version(bb_path)
                meta["blackbox"] = version
                modules = {
                    "smtp_starttls": ("starttls", pki.ca_file, SERVER_NAME),
                    "smtp_tls": ("implicit_tls", pki.ca_file, SERVER_NAME),
                }
                if pf is not None:
                    modules["postfix_starttls"] = ("starttls", pf.ca_file, SERVER_NAME)
                config = workdir / "blackbox.yml"
                blackbox.write_config(config, modules)
                port = _free_port()
                async with blackbox.running(bb_path, config, port, workdir / "blackbox.log") as bb:
                    _say(f"blackbox_exporter {version}: STARTTLS, implicit TLS at {rate:g}/s")
                    cpu.append(
                        await blackbox_rate(
                            bb,
                            "smtp_starttls",
                            starttls,
                            rate,
                            measure_s,
                            "scripted",
                            "starttls",
                            version,
                        )
                    )
                    cpu.append(
                        await blackbox_rate(
                            bb,
                            "smtp_tls",
                            implicit,
                            rate,
                            measure_s,
                            "scripted",
                            "implicit_tls",
                            version,
                        )
                    )
                    if pf is not None:
                        pf_rate = plan.postfix_targets / plan.rate_interval
                        _say(f"blackbox_exporter {version}: Postfix STARTTLS at {pf_rate:g}/s")
                        cpu.append(
                            await blackbox_rate(
                                bb,
                                "postfix_starttls",
                                [pf.starttls],
                                pf_rate,
                                measure_s,
                                "postfix",
                                "starttls",
                                version,
                            )
                        )

            rates = (("starttls", starttls), ("implicit_tls", implicit)) if "rate" in parts else ()
            for mode, group in rates:
                named = [(f"{ep.host}:{ep.port}", ep) for ep in group]
                _say(
                    f"smtp-tls-exporter: {len(named)} {mode} targets every {plan.rate_interval:g}s"
                )
                cpu.append(
                    await exporter_rate(
                        workdir,
                        mode,
                        named,
                        plan.rate_interval,
                        pki.ca_file,
                        server,
                        "scripted",
                        mode,
                    )
                )
                if mode == "starttls" and _has_uvloop():
                    _say("smtp-tls-exporter under uvloop: the same")
                    cpu.append(
                        await exporter_rate(
                            workdir,
                            "starttls-uvloop",
                            named,
                            plan.rate_interval,
                            pki.ca_file,
                            server,
                            "scripted",
                            mode,
                            uvloop=True,
                        )
                    )
            if pf is not None and "rate" in parts:
                named = [(f"postfix-{i:04d}", pf.starttls) for i in range(plan.postfix_targets)]
                _say(f"smtp-tls-exporter: Postfix STARTTLS, {len(named)} targets")
                cpu.append(
                    await exporter_rate(
                        workdir,
                        "postfix",
                        named,
                        plan.rate_interval,
                        pf.ca_file,
                        None,
                        "postfix",
                        "starttls",
                    )
                )

            rounds.append(cpu)
        cpu = merge_rounds(rounds)

        for n in plan.scale if "scale" in parts else ():
            _say(f"scale: {n} targets every {plan.scale_interval:g}s")
            scale.append(await scale_run(workdir, n, plan, server, pki.ca_file))
    meta["cpu"] = [asdict(r) for r in cpu]
    meta["scale"] = [asdict(r) for r in scale]
    meta["table"] = render(meta, cpu, scale)
    return meta


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run of a few minutes")
    p.add_argument("--out", type=Path, help="directory for results.json, logs and configs")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="server processes")
    p.add_argument("--subnet", type=int, default=77, help="B of the 127.B.x.y endpoints")
    p.add_argument("--no-postfix", action="store_true", help="leave Postfix out")
    p.add_argument("--no-blackbox", action="store_true", help="leave blackbox_exporter out")
    p.add_argument("--no-uvloop-server", action="store_true", help="scripted server on asyncio")
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)",
    )
    p.add_argument("--scale", help="comma-separated target counts for the scale part")
    p.add_argument(
        "--repeat",
        type=int,
        help="rounds of the CPU parts (native, blackbox, rate), each row the median of its "
        "rounds (default: 3, with --quick 1)",
    )
    args = p.parse_args()
    if not set(args.parts.split(",")) <= set(PARTS):
        p.error(f"--parts: choose among {','.join(PARTS)}")
    if not 1 <= args.subnet <= 254:
        p.error("--subnet must be 1..254")
    plan = QUICK if args.quick else FULL
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.scale:
        counts = tuple(int(n) for n in args.scale.split(","))
        plan = replace(plan, scale=counts, endpoints=max(plan.endpoints, *counts))
    workdir = args.out or Path(tempfile.mkdtemp(prefix="smtp-tls-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    _say(f"working directory {workdir}")
    pki = peers.make_pki(workdir)
    eps = peers.endpoints(plan.endpoints, args.subnet)
    _say(f"starting the scripted server: {len(eps)} endpoints, {args.workers} workers")
    # Forked before any event loop exists in this process.
    server = ScriptedServer(eps, pki, args.workers, uv=not args.no_uvloop_server)
    try:
        meta = asyncio.run(_bench(args, plan, workdir, pki, server))
    finally:
        server.stop()
    (workdir / "results.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(meta["table"])
    _say(f"results in {workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
