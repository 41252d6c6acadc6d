"""The exporter as users run it: a subprocess on loopback, scraped over HTTP, reloaded, stopped.

Peers are scripted servers, the real Postfix fixture, and a real Prometheus scraping the exporter
and answering through its HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import need
from tests.fixtures.postfix import PostfixServer
from tests.scripted import serve, smtp_session

T = TypeVar("T")
START_DEADLINE = 20.0
DEADLINE = 20.0
STOP_DEADLINE = 5.0
PROMETHEUS = "/usr/bin/prometheus"
LISTENING = re.compile(r"listening on (127\.0\.0\.1:\d+)")


def http(method: str, url: str, timeout: float = 20.0) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    for n, ls, v in samples(text):
        if n == name and all(ls.get(k) == want for k, want in labels.items()):
            return v
    return None


async def eventually(get: Callable[[], Awaitable[T]], check: Callable[[T], object], what: str) -> T:
    """Call `get` until `check` accepts its answer; fail after DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while True:
        got = await get()
        if check(got):
            return got
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}; last answer:\n{got}")
        await asyncio.sleep(0.1)


class ExporterProcess:
    """`python -m exporter` on 127.0.0.1:0; its stderr is collected line by line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.config = config
        self.args = args
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={self.config}",
                "--web.listen-address=127.0.0.1:0",
                *self.args,
            ],
            cwd=self.config.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_line(LISTENING.search, START_DEADLINE, "the 'listening on' line")
        match = LISTENING.search(line)
        assert match is not None
        self.url = f"http://{match.group(1)}"

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, pred: Callable[[str], object], timeout: float, what: str) -> str:
        """The first stderr line `pred` accepts, waiting up to `timeout` seconds for it."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = end - time.monotonic()
                exited = self.proc is not None and self.proc.poll() is not None
                if left <= 0 or exited:
                    log = "\n".join(self.lines[-40:])
                    pytest.fail(f"no {what} in the exporter's log:\n{log}")
                self._changed.wait(left)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM, and the exit status; a process still running after STOP_DEADLINE fails."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the exporter did not exit within {STOP_DEADLINE}s of SIGTERM")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def get(self, path: str) -> tuple[int, str]:
        return await asyncio.to_thread(http, "GET", self.url + path)

    async def post(self, path: str) -> tuple[int, str]:
        return await asyncio.to_thread(http, "POST", self.url + path)

    async def metrics(self) -> str:
        status, text = await self.get("/metrics")
        assert status == 200
        return text


@contextmanager
def exporter_process(config: Path, *args: str) -> Iterator[ExporterProcess]:
    exp = ExporterProcess(config, *args)
    try:
        exp.start()
        yield exp
    finally:
        exp.kill()


@contextmanager
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def scripted_server(tls: ssl.SSLContext) -> AsyncIterator[int]:
    async with serve(lambda r, w: smtp_session(r, w, tls)) as (_, port):
        yield port


def target_entry(name: str, port: int, ca_file: str, interval: str = "1h") -> str:
    return (
        f"  - {{name: {name}, host: 127.0.0.1, port: {port}, server_name: scripted.test, "
        f"ca_file: {ca_file}, interval: {interval}, timeout: 1s}}\n"
    )


def config(*entries: str, extra: str = "") -> str:
    return (
        "defaults:\n  timeout: 5s\n  ehlo_name: exporter.test\ntargets:\n"
        + "".join(entries)
        + extra
    )


# -- scripted peers ---------------------------------------------------------------------------


async def test_serves_metrics_logs_failures_and_stops_on_sigterm(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    async with scripted_server(server_tls) as good:
        with closed_port() as refused:
            path = tmp_path / "config.yml"
            path.write_text(
                config(target_entry("good", good, ca_file), target_entry("down", refused, ca_file))
            )
            with exporter_process(path, "--log.level=debug") as exp:
                text = await eventually(
                    exp.metrics,
                    lambda t: (
                        value(t, "smtp_tls_probe_success", target="down") is not None
                        and value(t, "smtp_tls_probe_success", target="good") is not None
                    ),
                    "both targets' results",
                )
                assert value(text, "smtp_tls_probe_success", target="good") == 1
                assert value(text, "smtp_tls_probe_success", target="down") == 0
                failure = {"target": "down", "stage": "connect", "reason": "connection_refused"}
                assert value(text, "smtp_tls_probe_failure_info", **failure) == 1
                assert value(text, "smtp_tls_starttls_advertised", target="good") == 1

                status, page = await exp.get("/")
                assert status == 200
                assert 'href="debug?target=good"' in page
                status, report = await exp.get("/debug?target=good")
                assert status == 200 and "EHLO exporter.test" in report

                # One logfmt WARNING line for the failed probe, with target, stage and reason.
                line = exp.wait_line(lambda s: "level=warn" in s, 5, "the warning line")
                assert re.search(
                    r'^ts=\S+Z level=warn logger=exporter\.service\.scheduler msg="probe failed" '
                    r"target=down .*stage=connect reason=connection_refused "
                    r'detail="127\.0\.0\.1 port \d+: connection refused"$',
                    line,
                ), line

                # At debug level, the transcript of every probe, as one logfmt line.
                line = exp.wait_line(
                    lambda s: "msg=transcript target=good " in s, 5, "the transcript line"
                )
                assert re.search(r"C +EHLO exporter\.test\\n", line), line
                assert re.search(r"S +220 2\.0\.0 go ahead\\n", line), line

                start = time.monotonic()
                assert exp.stop() == 0
                assert time.monotonic() - start < STOP_DEADLINE
                exp.wait_line(lambda s: "msg=stopped" in s, 1, "the 'stopped' line")


async def test_json_log_format(tmp_path: Path) -> None:
    with closed_port() as refused:
        path = tmp_path / "config.yml"
        path.write_text(config(f"  - 127.0.0.1:{refused}\n"))
        with exporter_process(path, "--log.format=json") as exp:
            line = exp.wait_line(lambda s: '"level": "warn"' in s, DEADLINE, "a warning")
            record = json.loads(line)
            assert record["msg"] == "probe failed"
            assert record["target"] == f"127.0.0.1:{refused}"
            assert (record["stage"], record["reason"]) == ("connect", "connection_refused")
            assert exp.stop() == 0


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_config_at_startup_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("targets:\n  - 127.0.0.1:70000\n  - {host: 127.0.0.1}\nbogus: 1\n")
    for args in ([], ["--config.check"]):
        done = run_cli(
            f"--config.file={path}", "--web.listen-address=127.0.0.1:0", *args, cwd=tmp_path
        )
        assert done.returncode == 1, done
        assert done.stderr.splitlines() == [
            f"{path}: invalid config (3 problems):",
            "  bogus: unknown key",
            "  targets[0]: \"127.0.0.1:70000\" is not host:port ('70000' is not a port)",
            "  targets[1].port: missing",
        ]
    path.write_text("targets:\n  - 127.0.0.1:2525\n")
    done = run_cli(f"--config.file={path}", "--config.check", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"{path}: OK (1 targets)\n")


def test_a_port_in_use_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("targets: []\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(
            f"--config.file={path}", f"--web.listen-address=127.0.0.1:{port}", cwd=tmp_path
        )
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:" in done.stderr


async def test_reload_by_post_and_sighup(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    async with scripted_server(server_tls) as good:
        with closed_port() as refused:
            ticking = target_entry("ticking", good, ca_file, interval="1s")
            down = target_entry("down", refused, ca_file)
            added = target_entry("added", good, ca_file)  # interval 1h: only "at once" explains it
            bad = config(ticking, "  - {host: 127.0.0.1, port: 0}\n")
            path = tmp_path / "config.yml"
            path.write_text(config(ticking, down))
            with exporter_process(path) as exp:
                await eventually(
                    exp.metrics,
                    lambda t: value(t, "smtp_tls_probe_success", target="down") == 0,
                    "the first results",
                )

                async def reloaded(ok: int) -> str:
                    name = "smtp_tls_exporter_config_last_reload_successful"
                    return await eventually(
                        exp.metrics, lambda t: value(t, name) == ok, f"reload status {ok}"
                    )

                async def last_probe(text: str) -> float:
                    got = value(text, "smtp_tls_last_probe_timestamp_seconds", target="ticking")
                    assert got is not None
                    return got

                # POST, good: "added" is probed at once, "down" and its series are gone.
                path.write_text(config(ticking, added))
                status, body = await exp.post("/-/reload")
                assert (status, body) == (200, f"{path}: reloaded (2 targets)\n")
                text = await eventually(
                    exp.metrics,
                    lambda t: value(t, "smtp_tls_probe_success", target="added") == 1,
                    "the added target's result",
                )
                assert value(text, "smtp_tls_exporter_config_last_reload_successful") == 1
                assert not [s for s in samples(text) if s[1].get("target") == "down"]
                assert value(text, "smtp_tls_exporter_targets") == 2

                # POST, bad: 500 with the problem; the old targets are still probed.
                path.write_text(bad)
                status, body = await exp.post("/-/reload")
                assert status == 500
                assert "targets[1].port: 0 is not a port" in body
                text = await reloaded(0)
                before = await last_probe(text)
                text = await eventually(
                    exp.metrics,
                    lambda t: (
                        value(t, "smtp_tls_last_probe_timestamp_seconds", target="ticking")
                        != before
                    ),
                    "another probe of a target of the kept config",
                )
                assert value(text, "smtp_tls_probe_success", target="added") == 1

                # SIGHUP, good, then bad.
                path.write_text(config(ticking, down))
                exp.signal(signal.SIGHUP)
                text = await reloaded(1)
                await eventually(
                    exp.metrics,
                    lambda t: value(t, "smtp_tls_probe_success", target="down") == 0,
                    "the re-added target's result",
                )
                path.write_text(bad)
                exp.signal(signal.SIGHUP)
                text = await reloaded(0)
                line = exp.wait_line(
                    lambda s: "reload failed" in s and "level=error" in s, 5, "the reload error"
                )
                assert "targets[1].port: 0 is not a port" in line
                assert value(text, "smtp_tls_exporter_targets") == 2
                assert exp.stop() == 0


# -- the real Postfix -------------------------------------------------------------------------

POSTFIX_TARGETS = (
    "relay_25",
    "submission_587",
    "smtps_465",
    "no_starttls",
    "expired",
    "expiring_soon",
    "tls12_only",
    "multiline_greeting",
)


@pytest.mark.postfix
async def test_exporter_against_real_postfix(tmp_path: Path, postfix: PostfixServer) -> None:
    entries = []
    for name in POSTFIX_TARGETS:
        lst = postfix.listener(name)
        verify = ", verify: required" if name == "expired" else ""
        entries.append(
            f"  - {{name: {name}, host: {lst.host}, port: {lst.port}, mode: {lst.mode}, "
            f"server_name: {lst.server_name}, ca_file: {lst.ca_file}{verify}}}\n"
        )
    path = tmp_path / "config.yml"
    path.write_text(
        "defaults:\n  timeout: 10s\n  ehlo_name: exporter.test\ntargets:\n" + "".join(entries)
    )
    with exporter_process(path) as exp:
        text = await eventually(
            exp.metrics,
            lambda t: all(
                value(t, "smtp_tls_probe_success", target=n) is not None for n in POSTFIX_TARGETS
            ),
            "a result for every Postfix listener",
        )
        now = time.time()
        for name in ("relay_25", "submission_587", "smtps_465", "tls12_only", "expiring_soon"):
            assert value(text, "smtp_tls_probe_success", target=name) == 1, name
            days = value(text, "smtp_tls_cert_expiry_days", target=name)
            expected = (postfix.listener(name).leaf_not_after - now) / 86400
            assert days is not None and abs(days - expected) < 1, (name, days, expected)
        assert value(text, "smtp_tls_probe_success", target="multiline_greeting") == 1
        assert value(text, "smtp_tls_cert_expiry_days", target="expiring_soon") == pytest.approx(
            5, abs=1
        )

        assert value(text, "smtp_tls_version_info", target="relay_25", version="TLS 1.3") == 1
        assert value(text, "smtp_tls_version_info", target="tls12_only", version="TLS 1.2") == 1
        assert value(text, "smtp_tls_version_info", target="smtps_465") == 1
        assert value(text, "smtp_tls_starttls_advertised", target="relay_25") == 1
        assert value(text, "smtp_tls_starttls_advertised", target="no_starttls") == 0
        assert value(text, "smtp_tls_starttls_advertised", target="smtps_465") is None
        assert value(text, "smtp_tls_cert_trusted", target="relay_25") == 1
        assert value(text, "smtp_tls_cert_hostname_match", target="relay_25") == 1

        # The expired certificate fails the probe and still shows every certificate series.
        expired = postfix.listener("expired")
        assert value(text, "smtp_tls_probe_success", target="expired") == 0
        failure = {"target": "expired", "stage": "certificate", "reason": "expired"}
        assert value(text, "smtp_tls_probe_failure_info", **failure) == 1
        not_after = value(text, "smtp_tls_cert_not_after_timestamp_seconds", target="expired")
        assert not_after is not None and math.isclose(not_after, expired.leaf_not_after, abs_tol=1)
        days = value(text, "smtp_tls_cert_expiry_days", target="expired")
        assert days is not None and -11 < days < -9
        assert value(text, "smtp_tls_cert_verify_info", target="expired", reason="expired") == 1
        assert value(text, "smtp_tls_cert_info", target="expired") == 1

        failure = {"target": "no_starttls", "stage": "starttls"}
        assert value(
            text, "smtp_tls_probe_failure_info", reason="starttls_not_advertised", **failure
        )

        status, report = await exp.get("/debug?target=multiline_greeting")
        assert status == 200
        # postscreen's multi-line greeting, read whole before EHLO (ssl_exporter PR #205)
        assert re.search(r"S +220-mail\.example\.test ESMTP", report), report
        assert re.search(r"C +EHLO exporter\.test", report), report
        assert exp.stop() == 0


# -- a real Prometheus ------------------------------------------------------------------------


def prometheus_config(exporter: str) -> str:
    # Two jobs: the exporter's /metrics, and blackbox-style /probe of one configured target.
    return f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: smtp_tls
    static_configs:
      - targets: ["{exporter}"]
  - job_name: smtp_tls_probe
    metrics_path: /probe
    static_configs:
      - targets: ["good"]
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: "{exporter}"
"""


@contextmanager
def prometheus(tmp_path: Path, exporter_url: str) -> Iterator[str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(exporter_url.removeprefix("http://")))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        status, body = http("GET", url, timeout=5)
    except OSError:
        return []  # not listening yet
    if status != 200:
        return []
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


async def test_prometheus_scrapes_the_exporter(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    have = os.access(PROMETHEUS, os.X_OK) or shutil.which("prometheus") is not None
    need(have, f"{PROMETHEUS} is not installed (apt-get install prometheus)")
    async with scripted_server(server_tls) as good:
        path = tmp_path / "config.yml"
        path.write_text(config(target_entry("good", good, ca_file)))
        with exporter_process(path) as exp, prometheus(tmp_path, exp.url) as prom:

            async def ask(expr: str) -> list[dict[str, Any]]:
                return await asyncio.to_thread(query, prom, expr)

            scheduled = await eventually(
                lambda: ask('smtp_tls_probe_success{job="smtp_tls"}'),
                bool,
                "smtp_tls_probe_success from the /metrics job",
            )
            assert len(scheduled) == 1
            assert scheduled[0]["metric"]["target"] == "good"
            assert scheduled[0]["value"][1] == "1"

            on_demand = await eventually(
                lambda: ask('smtp_tls_probe_success{job="smtp_tls_probe"}'),
                bool,
                "smtp_tls_probe_success from the /probe job",
            )
            assert on_demand[0]["metric"]["instance"] == "good"
            assert on_demand[0]["value"][1] == "1"
            up = await ask("up")
            assert sorted(r["value"][1] for r in up) == ["1", "1"]
            assert exp.stop() == 0
