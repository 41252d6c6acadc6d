"""The exporter under load: many targets on real (Postfix) and scripted peers, several intervals.

The scripted peers run in a process of their own (tests/load_peers.py), so the figures are the
exporter's alone. The exporter starts with no targets (the baseline of open files), is reloaded
to the load config, runs for a number of intervals while /metrics is scraped every half second,
and is reloaded back to no targets. Checked: every target is probed within its interval plus
the time a probe may wait and take (2 x timeout), but for endpoints the exporter backs off from
on purpose; the scheduler's lag stays under the timeout; RSS stays flat after warm-up; open
files return to the baseline; every scrape answers. The figures are printed.

The default suite runs 300 targets for 2 intervals; the full size is opt-in:

    ./scripts/test -m load tests/test_load.py       (2,000 targets, 6 intervals of 20 s)

docs/reliability.md has the last full run's figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from tests.fixtures.postfix import PostfixServer
from tests.test_service_e2e import ExporterProcess, exporter_process

ROOT = Path(__file__).resolve().parent.parent
# The full run's interval: LOAD_INTERVAL=10 to try another.
INTERVAL = float(os.environ.get("LOAD_INTERVAL", "20"))
INTERVALS = int(os.environ.get("LOAD_INTERVALS", "6"))
# Share of the targets per kind, and how many targets one host of that kind gets: few on the
# hosts whose probes hold a connection for long, so that two connections per host keep up (a
# host's capacity is host_concurrency / probe duration: 20 targets every 20 s is one a second).
MIX = {
    "good": (0.43, 20),
    "slow": (0.15, 8),
    "dead": (0.12, 40),
    "tarpit": (0.05, 3),
    "garbage": (0.06, 20),
    "oversized": (0.06, 20),
    "busy": (0.05, 20),
    "reset": (0.05, 20),
    "postfix": (0.03, 0),  # the real Postfix's listeners, one host each
}
POSTFIX_LISTENERS = ("relay_25", "submission_587", "smtps_465")
_LAST = re.compile(r'^smtp_tls_last_probe_timestamp_seconds\{.*?target="([^"]+)".*\} (\S+)$', re.M)
_BACKOFF = re.compile(r'^smtp_tls_exporter_backoff_seconds\{host="([^"]+)",port="(\d+)"\}', re.M)


@dataclass
class Figures:
    targets: int
    interval: float
    timeout: float
    duration: float = 0.0
    probes: int = 0
    scrapes: int = 0
    scrape_max: float = 0.0
    scrape_bytes: int = 0
    lag_max: float = 0.0  # since the start, the first burst of probes included
    lag_warm: float = 0.0  # the largest lag sampled after warm-up
    staleness_max: float = 0.0
    staleness_by_kind: dict[str, float] = field(default_factory=dict)
    gap_by_kind: dict[str, float] = field(default_factory=dict)  # between two probes' starts
    backed_off_endpoints: int = 0
    rss_mib: list[float] = field(default_factory=list)
    fds_baseline: int = 0
    fds_max: int = 0
    fds_after: int = 0
    cpu_seconds: float = 0.0
    peers_cpu_seconds: float = 0.0  # the scripted peers' process, for comparison

    def report(self) -> str:
        warm = self.rss_mib[len(self.rss_mib) // 3 :] or self.rss_mib
        return (
            f"load: {self.targets} targets, interval {self.interval:g}s, timeout "
            f"{self.timeout:g}s, {self.duration:.0f}s\n"
            f"  probes run          {self.probes} ({self.probes / self.duration:.0f}/s)\n"
            f"  exporter CPU        {self.cpu_seconds:.1f}s "
            f"({100 * self.cpu_seconds / self.duration:.0f}% of one core; the scripted peers "
            f"{100 * self.peers_cpu_seconds / self.duration:.0f}%)\n"
            f"  scheduler lag       {self.lag_warm:.3f}s at most after warm-up "
            f"({self.lag_max:.3f}s in the first burst)\n"
            f"  staleness max       {self.staleness_max:.2f}s "
            f"(bound: interval + 2 x timeout = {self.interval + 2 * self.timeout:g}s; "
            f"{self.backed_off_endpoints} endpoints backed off on purpose, not counted)\n"
            f"  longest gap between two probes of a target, by kind (bound: interval + timeout = "
            f"{self.interval + self.timeout:g}s): "
            + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.gap_by_kind.items()))
            + "\n"
            "  staleness by kind   "
            + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.staleness_by_kind.items()))
            + "\n"
            f"  /metrics            {self.scrapes} scrapes, slowest {self.scrape_max:.3f}s, "
            f"{self.scrape_bytes / 1024:.0f} KiB\n"
            f"  RSS MiB             start {self.rss_mib[0]:.1f}, after warm-up "
            f"{min(warm):.1f}..{max(warm):.1f}, end {self.rss_mib[-1]:.1f}\n"
            f"  open files          baseline {self.fds_baseline}, max {self.fds_max}, "
            f"after {self.fds_after}"
        )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fds(pid: int) -> int:
    """Open descriptors, less /dev/null: libuv (the exporter runs on uvloop when installed) opens
    it once, at the first connection, and keeps it for the loop's life; not a leak."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "/dev/null":
                count += 1
    return count


def scrape(url: str) -> tuple[str, float]:
    start = time.monotonic()
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    return body, time.monotonic() - start


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def plan(n: int, postfix: PostfixServer | None) -> dict[str, tuple[int, int]]:
    """kind -> (targets, hosts)."""
    out = {}
    for kind, (share, per_host) in MIX.items():
        count = round(n * share)
        if kind == "postfix":
            out[kind] = (count if postfix else 0, 0)
            continue
        out[kind] = (count, max(1, math.ceil(count / per_host)))
    out["good"] = (out["good"][0] + n - sum(c for c, _ in out.values()), out["good"][1])
    return out


def load_config(
    peers: dict[str, list[list[object]]],
    layout: dict[str, tuple[int, int]],
    postfix: PostfixServer | None,
    ca_file: str,
    interval: float,
    timeout: float,
) -> str:
    lines = [
        "defaults:",
        f"  interval: {interval:g}s",
        f"  timeout: {timeout:g}s",
        "  ehlo_name: exporter.test",
        "  concurrency: 100",
        "targets:",
    ]
    for kind, (count, _) in layout.items():
        for i in range(count):
            if kind == "postfix":
                assert postfix is not None
                lst = postfix.listener(POSTFIX_LISTENERS[i % len(POSTFIX_LISTENERS)])
                host, port, mode, ca, name = (
                    lst.host,
                    lst.port,
                    lst.mode,
                    lst.ca_file,
                    lst.server_name,
                )
            else:
                host, port = peers[kind][i % len(peers[kind])]
                mode, ca, name = "starttls", ca_file, "scripted.test"
            lines.append(
                f"  - {{name: {kind}-{i}, host: {host}, port: {port}, mode: {mode}, "
                f"server_name: {name}, ca_file: {ca}, verify: report}}"
            )
    return "\n".join(lines) + "\n"


def run_load(
    tmp_path: Path,
    postfix: PostfixServer | None,
    n: int,
    interval: float,
    intervals: int,
    timeout: float,
    scrape_every: float,
) -> Figures:
    ca = trustme.CA()
    leaf = ca.issue_cert("scripted.test")
    cert, key, ca_file = tmp_path / "peer.crt", tmp_path / "peer.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    layout = plan(n, postfix)
    hosts = ",".join(f"{k}={h}" for k, (c, h) in layout.items() if k != "postfix" and c)
    command = [sys.executable, "-m", "tests.load_peers", "--cert", str(cert), "--key", str(key)]
    peers_proc = subprocess.Popen(
        [*command, "--hosts", hosts],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peers_proc.stdout is not None
        peers = json.loads(peers_proc.stdout.readline())
        path = tmp_path / "config.yml"
        path.write_text("targets: []\n")
        with exporter_process(path) as exp:
            config = load_config(peers, layout, postfix, str(ca_file), interval, timeout)
            peers_cpu = cpu_seconds(peers_proc.pid)
            fig = measure(exp, path, config, n, interval, intervals, timeout, scrape_every)
            # up to the end of the run and the return to no targets: an upper bound
            fig.peers_cpu_seconds = cpu_seconds(peers_proc.pid) - peers_cpu
            return fig
    finally:
        assert peers_proc.stdin is not None
        peers_proc.stdin.close()
        try:
            peers_proc.wait(10)
        except subprocess.TimeoutExpired:
            peers_proc.kill()
            peers_proc.wait()


def measure(
    exp: ExporterProcess,
    path: Path,
    config: str,
    n: int,
    interval: float,
    intervals: int,
    timeout: float,
    scrape_every: float,
) -> Figures:
    assert exp.proc is not None
    pid = exp.proc.pid
    fig = Figures(n, interval, timeout)
    fig.fds_baseline = fds(pid)
    cpu0 = cpu_seconds(pid)
    path.write_text(config)
    exp.signal(signal.SIGHUP)
    exp.wait_line(lambda s: "config reloaded" in s, 30, "the load config")
    start = time.monotonic()
    # The first probes run at once, the second ones up to two intervals later (the grid): from
    # then on every target is on its interval.
    warm = start + 2 * interval + 2 * timeout
    end = warm + intervals * interval
    backed_off: set[tuple[str, str]] = set()
    last_seen: dict[str, float] = {}
    probes0 = None
    deadline_factor = 3.0  # the run stops by itself even if scrapes crawl
    while time.monotonic() < end:
        if time.monotonic() > start + deadline_factor * (end - start):
            pytest.fail("the load run overran its time")
        text, took = scrape(exp.url)
        now = time.time()
        fig.scrapes += 1
        fig.scrape_max = max(fig.scrape_max, took)
        fig.scrape_bytes = len(text)
        fig.rss_mib.append(rss_mib(pid))
        fig.fds_max = max(fig.fds_max, fds(pid))
        backed_off |= set(_BACKOFF.findall(text))
        probes = sum(
            float(v)
            for v in re.findall(r"^smtp_tls_exporter_probes_total\{.*\} (\S+)$", text, re.M)
        )
        probes0 = probes if probes0 is None else probes0
        fig.probes = int(probes - probes0)
        if time.monotonic() >= warm:
            fig.lag_warm = max(
                fig.lag_warm, metric(text, "smtp_tls_exporter_scheduler_lag_seconds")
            )
            stamps = dict(_LAST.findall(text))
            missing = [
                f"{k}-{i}"
                for k, (c, _) in plan_counts(config).items()
                for i in range(c)
                if f"{k}-{i}" not in stamps
            ]
            assert not missing, f"never probed: {missing[:10]}"
            hosts = target_endpoints(config)
            for name, ts in stamps.items():
                if hosts[name] in backed_off:
                    continue
                previous = last_seen.get(name)
                if previous is not None and float(ts) != previous:
                    kind = name.rsplit("-", 1)[0]
                    gap = float(ts) - previous
                    fig.gap_by_kind[kind] = max(fig.gap_by_kind.get(kind, 0.0), gap)
                last_seen[name] = float(ts)
                age = now - float(ts)
                fig.staleness_max = max(fig.staleness_max, age)
                kind = name.rsplit("-", 1)[0]
                fig.staleness_by_kind[kind] = max(fig.staleness_by_kind.get(kind, 0.0), age)
        time.sleep(scrape_every)  # the sampling period of the measurement, not a synchronisation
    fig.duration = time.monotonic() - start
    fig.cpu_seconds = cpu_seconds(pid) - cpu0
    fig.lag_max = metric(text, "smtp_tls_exporter_scheduler_lag_max_seconds")
    fig.backed_off_endpoints = len(backed_off)
    # Back to no targets: every probe task ends, every socket closes.
    path.write_text("targets: []\n")
    exp.lines.clear()
    exp.signal(signal.SIGHUP)
    exp.wait_line(lambda s: "config reloaded" in s, 30, "the empty config")
    stop = time.monotonic() + 30
    while fds(pid) != fig.fds_baseline and time.monotonic() < stop:
        time.sleep(0.1)  # polled with a deadline
    fig.fds_after = fds(pid)
    assert exp.stop() == 0
    return fig


def plan_counts(config: str) -> dict[str, tuple[int, int]]:
    counts: dict[str, int] = {}
    for kind in re.findall(r"name: (\w+)-\d+,", config):
        counts[kind] = counts.get(kind, 0) + 1
    return {k: (c, 0) for k, c in counts.items()}


def target_endpoints(config: str) -> dict[str, tuple[str, str]]:
    return {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"name: ([\w-]+), host: ([\d.]+), port: (\d+)", config)
    }


def check(fig: Figures) -> None:
    assert max(fig.gap_by_kind.values()) <= fig.interval + fig.timeout + 0.5, fig.report()
    assert fig.staleness_max <= fig.interval + 2 * fig.timeout + 1.0, fig.report()
    assert fig.lag_warm < fig.timeout, fig.report()
    assert fig.scrape_max < 5.0, fig.report()
    warm = fig.rss_mib[len(fig.rss_mib) // 3 :]
    assert max(warm) - min(warm) < max(16.0, 0.15 * min(warm)), fig.report()
    assert fig.fds_after == fig.fds_baseline, fig.report()


@pytest.mark.postfix
def test_load_300_targets_for_two_intervals(
    tmp_path: Path, postfix: PostfixServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fig = run_load(tmp_path, postfix, 300, interval=5.0, intervals=2, timeout=1.5, scrape_every=1)
    with capsys.disabled():
        print("\n" + fig.report())
    check(fig)


@pytest.mark.load
@pytest.mark.postfix
def test_load_2000_targets_for_six_intervals(
    tmp_path: Path, postfix: PostfixServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fig = run_load(
        tmp_path, postfix, 2000, interval=INTERVAL, intervals=INTERVALS, timeout=2.0, scrape_every=5
    )
    with capsys.disabled():
        print("\n" + fig.report())
    check(fig)
