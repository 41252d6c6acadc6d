"""The HTTP endpoints, served by the real service (config, scheduler, probe, collector) in-process.

Mail servers are scripted ones on loopback; requests go over a real socket from a worker thread,
since the HTTP layer itself calls back into the event loop the test runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import load_config
from exporter.domains.config import DnsConfig, DomainConfig
from exporter.domains.model import DomainResult
from exporter.service.http import HttpServer
from exporter.service.main import ON_DEMAND_LIMIT, Service, running
from tests.scripted import serve, smtp_session
from tests.test_collector import broken, enforced

DEADLINE = 10.0


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(
    method: str, url: str, headers: dict[str, str] | None = None, timeout: float = 20.0
) -> Response:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, err.headers, err.read())


async def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
    return await asyncio.to_thread(request, method, url, headers)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample `name` whose labels include `labels`, or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def until(condition: Callable[[], object], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@dataclass
class Exporter:
    service: Service
    url: str
    config_path: Path

    async def metrics(self) -> str:
        resp = await fetch(self.url + "/metrics")
        assert resp.status == 200
        return resp.text


@contextlib.asynccontextmanager
async def exporter(config_path: Path) -> AsyncIterator[Exporter]:
    service = Service(load_config(str(config_path)), str(config_path))
    server = HttpServer("127.0.0.1", 0, service)
    async with running(service, server):
        yield Exporter(service, server.url, config_path)


def config_text(
    good_port: int,
    refused_port: int,
    ca_file: str,
    *,
    extra_targets: str = "",
    allowlist: str = "[]",
) -> str:
    return f"""\
defaults:
  interval: 1h
  timeout: 5s
  ehlo_name: exporter.test
  host_concurrency: 16  # every scripted server is on 127.0.0.1
targets:
  - name: good
    host: 127.0.0.1
    port: {good_port}
    server_name: scripted.test
    ca_file: {ca_file}
    verify: required
  - name: down
    host: 127.0.0.1
    port: {refused_port}
{extra_targets}
probe_allowlist: {allowlist}
"""


@dataclass
class Setup:
    exporter: Exporter
    good_port: int
    refused_port: int
    ca_file: str

    def write(self, text: str) -> None:
        self.exporter.config_path.write_text(text)


@pytest.fixture
async def setup(tmp_path: Path, server_tls: ssl.SSLContext, ca_file: str) -> AsyncIterator[Setup]:
    async with serve(lambda r, w: smtp_session(r, w, server_tls)) as (_, good_port):
        with closed_port() as refused_port:
            path = tmp_path / "config.yml"
            path.write_text(config_text(good_port, refused_port, ca_file, allowlist="[127.0.0.2]"))
            async with exporter(path) as exp:
                await until(
                    lambda: len(exp.service.snapshot().results) == 2, "the first two probes"
                )
                yield Setup(exp, good_port, refused_port, ca_file)


# -- /metrics ---------------------------------------------------------------------------------


async def test_metrics_are_text_format_by_default(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert resp.headers.get("Content-Encoding") is None
    assert sample(resp.text, "smtp_tls_probe_success", target="good") == 1
    assert sample(resp.text, "smtp_tls_probe_success", target="down") == 0
    reason = {"target": "down", "stage": "connect", "reason": "connection_refused"}
    assert sample(resp.text, "smtp_tls_probe_failure_info", **reason) == 1
    assert sample(resp.text, "smtp_tls_exporter_config_last_reload_successful") == 1


async def test_metrics_are_openmetrics_when_asked(setup: Setup) -> None:
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8, text/plain;q=0.5"
    resp = await fetch(setup.exporter.url + "/metrics", headers={"Accept": accept})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert resp.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(resp.text)}  # type: ignore[no-untyped-call]
    success = {s.labels["target"]: s.value for s in families["smtp_tls_probe_success"].samples}
    assert success == {"good": 1, "down": 0}
    probes = families["smtp_tls_exporter_probes"]
    assert probes.type == "counter"
    assert sum(s.value for s in probes.samples if s.name.endswith("_total")) == 2


async def test_metrics_are_gzipped_when_asked(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert int(resp.headers["Content-Length"]) == len(resp.body)
    text = gzip.decompress(resp.body).decode()
    assert sample(text, "smtp_tls_probe_success", target="good") == 1


async def test_head_sends_headers_only(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/metrics", method="HEAD")
    assert resp.status == 200
    assert resp.body == b""
    assert int(resp.headers["Content-Length"]) > 0


# -- landing page, debug, health --------------------------------------------------------------


async def test_landing_page_lists_every_target(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    page = resp.text
    good_row = next(line for line in page.splitlines() if "<td>good</td>" in line)
    assert '"ok">OK<' in good_row
    assert "TLS 1." in good_row
    # trustme's leaf is valid for a year or so: some hundreds of days left
    assert " days</td>" in good_row
    assert 'href="debug?target=good"' in good_row
    down_row = next(line for line in page.splitlines() if "<td>down</td>" in line)
    assert '"failed">FAILED<' in down_row
    assert "<td>connect</td><td>connection_refused</td>" in down_row
    assert 'href="metrics"' in page


async def test_landing_page_escapes_names(setup: Setup) -> None:
    text = config_text(
        setup.good_port,
        setup.refused_port,
        setup.ca_file,
        extra_targets=f'  - {{name: "<b>x&y</b>", host: 127.0.0.1, port: {setup.refused_port}}}',
    )
    setup.write(text)
    assert (await fetch(setup.exporter.url + "/-/reload", method="POST")).status == 200
    # The report link appears with the first result.
    service = setup.exporter.service
    await until(lambda: "<b>x&y</b>" in service.snapshot().results, "the new target's probe")
    page = (await fetch(setup.exporter.url + "/")).text
    assert "<b>x&y</b>" not in page
    assert "<td>&lt;b&gt;x&amp;y&lt;/b&gt;</td>" in page
    assert 'href="debug?target=%3Cb%3Ex%26y%3C%2Fb%3E"' in page


async def test_debug_shows_the_last_scheduled_result_with_transcript(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/debug?target=good")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    report = resp.text
    assert report.startswith("Last scheduled probe of good, started ")
    assert "OK  good  (mode starttls, verify required, server name scripted.test)" in report
    assert "Transcript" in report
    assert "EHLO exporter.test" in report
    assert "STARTTLS" in report

    down = (await fetch(setup.exporter.url + "/debug?target=down")).text
    assert "FAILED  down" in down
    assert "reason: connection_refused" in down


async def test_debug_refuses_unknown_and_missing_targets(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/debug?target=nope")
    assert resp.status == 404
    assert "no configured target named 'nope'" in resp.text
    assert (await fetch(setup.exporter.url + "/debug")).status == 400


async def test_healthy_and_ready(setup: Setup) -> None:
    healthy = await fetch(setup.exporter.url + "/-/healthy")
    assert (healthy.status, healthy.text) == (200, "Healthy.\n")
    ready = await fetch(setup.exporter.url + "/-/ready")
    assert (ready.status, ready.text) == (200, "Ready.\n")
    # Shutting down: no longer ready, still answering.
    setup.exporter.service.stopping()
    assert (await fetch(setup.exporter.url + "/-/ready")).status == 503
    assert (await fetch(setup.exporter.url + "/-/healthy")).status == 200


async def test_unknown_paths_and_wrong_methods(setup: Setup) -> None:
    assert (await fetch(setup.exporter.url + "/nope")).status == 404
    resp = await fetch(setup.exporter.url + "/metrics", method="POST")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"


# -- reload -----------------------------------------------------------------------------------


async def test_reload_needs_post(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/-/reload")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST, PUT"


async def test_reload_applies_a_good_config_and_keeps_the_old_on_a_bad_one(setup: Setup) -> None:
    exp = setup.exporter
    before = exp.service.snapshot().reload_success_timestamp
    assert before is not None
    # Good: "down" removed, "again" added (and probed at once).
    added = f"  - {{name: again, host: 127.0.0.1, port: {setup.good_port}}}"
    text = config_text(setup.good_port, setup.refused_port, setup.ca_file, extra_targets=added)
    setup.write(text.replace("  - name: down\n", "  - name: gone\n"))
    resp = await fetch(exp.url + "/-/reload", method="POST")
    assert (resp.status, resp.text) == (200, f"{exp.config_path}: reloaded (3 targets)\n")
    await until(lambda: "again" in exp.service.snapshot().results, "the added target's probe")
    metrics = await exp.metrics()
    assert sample(metrics, "smtp_tls_probe_success", target="again") == 1
    assert sample(metrics, "smtp_tls_probe_success", target="down") is None
    assert sample(metrics, "smtp_tls_exporter_config_last_reload_successful") == 1
    after = sample(metrics, "smtp_tls_exporter_config_last_reload_success_timestamp_seconds")
    assert after is not None and after >= before

    # Bad: every problem in the answer, the running config kept.
    bad = added + "\n  - {name: bad, host: 127.0.0.1, port: 70000}"
    text = config_text(setup.good_port, setup.refused_port, setup.ca_file, extra_targets=bad)
    setup.write(text + "bogus: 1\n")
    resp = await fetch(exp.url + "/-/reload", method="POST")
    assert resp.status == 500
    assert resp.text == (
        f"{exp.config_path}: invalid config, not loaded:\n"
        "bogus: unknown key\n"
        "targets[3].port: 70000 is not a port\n"
    )
    metrics = await exp.metrics()
    assert sample(metrics, "smtp_tls_exporter_config_last_reload_successful") == 0
    assert sample(metrics, "smtp_tls_probe_success", target="again") == 1
    assert [t.name for t in exp.service.snapshot().targets] == ["good", "gone", "again"]


# -- /probe -----------------------------------------------------------------------------------


async def test_probe_a_configured_target_by_name(setup: Setup) -> None:
    exp = setup.exporter
    probes_before = exp.service.snapshot().probes_total
    resp = await fetch(exp.url + "/probe?target=good")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert sample(resp.text, "smtp_tls_probe_success", target="good") == 1
    assert sample(resp.text, "smtp_tls_version_info", target="good") == 1
    # That probe's series only: no other target, no exporter-wide families.
    assert sample(resp.text, "smtp_tls_probe_success", target="down") is None
    assert "smtp_tls_exporter_" not in resp.text
    # On demand is not scheduled: the state and its counters are untouched.
    assert exp.service.snapshot().probes_total == probes_before


async def test_probe_with_debug_returns_the_report(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/probe?target=good&debug=true")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    # "good" was probed at start, less than its interval ago: that probe's report (test_manners)
    intro, _, report = resp.text.partition("\n\n")
    assert intro.startswith("Result of the probe started ")
    assert report.startswith("OK  good")
    assert "Transcript" in resp.text
    assert "EHLO exporter.test" in resp.text
    assert "Metrics returned by this probe" in resp.text
    assert 'smtp_tls_probe_success{host="127.0.0.1"' in resp.text


async def test_probe_another_port_of_a_configured_host(setup: Setup) -> None:
    with closed_port() as port:
        resp = await fetch(setup.exporter.url + f"/probe?target=127.0.0.1:{port}")
    assert resp.status == 200
    name = f"127.0.0.1:{port}"
    assert sample(resp.text, "smtp_tls_probe_success", target=name) == 0
    failure = {"target": name, "stage": "connect", "reason": "connection_refused"}
    assert sample(resp.text, "smtp_tls_probe_failure_info", **failure) == 1


async def test_probe_an_allowlisted_host(setup: Setup) -> None:
    # 127.0.0.2 is in probe_allowlist and nothing listens there on this port.
    resp = await fetch(setup.exporter.url + f"/probe?target=127.0.0.2:{setup.refused_port}")
    assert resp.status == 200
    name = f"127.0.0.2:{setup.refused_port}"
    assert sample(resp.text, "smtp_tls_probe_success", target=name) == 0


async def test_probe_refuses_hosts_not_in_the_config(setup: Setup) -> None:
    resp = await fetch(setup.exporter.url + "/probe?target=127.0.0.3:25")
    assert resp.status == 403
    assert resp.text == (
        "127.0.0.3 is neither a configured target's host nor in probe_allowlist; "
        "this exporter probes only hosts its config names\n"
    )
    resp = await fetch(setup.exporter.url + "/probe?target=nope")
    assert resp.status == 404
    assert "no configured target named 'nope'" in resp.text
    assert (await fetch(setup.exporter.url + "/probe")).status == 400


async def test_probe_follows_the_scrape_timeout(setup: Setup) -> None:
    silent = asyncio.Event()

    async def never_greets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await silent.wait()

    async with serve(never_greets) as (host, port):
        start = time.monotonic()
        resp = await fetch(
            setup.exporter.url + f"/probe?target={host}:{port}",
            headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"},
        )
        elapsed = time.monotonic() - start
    assert resp.status == 200
    failure = {"stage": "greeting", "reason": "timeout"}
    assert sample(resp.text, "smtp_tls_probe_failure_info", **failure) == 1
    # 1.5s minus the 0.5s offset, well below the target's own 5s timeout
    assert 0.9 < elapsed < 4.0


async def test_on_demand_probes_are_capped(setup: Setup, server_tls: ssl.SSLContext) -> None:
    release = asyncio.Event()
    connected = 0

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connected
        connected += 1
        await release.wait()
        await smtp_session(reader, writer, server_tls)

    async with contextlib.AsyncExitStack() as stack:
        # One port each: an endpoint probed a moment ago is not probed again (test_manners).
        ports = [
            (await stack.enter_async_context(serve(held)))[1] for _ in range(ON_DEMAND_LIMIT + 1)
        ]
        urls = [setup.exporter.url + f"/probe?target=127.0.0.1:{port}" for port in ports]
        waiting = [asyncio.create_task(fetch(url)) for url in urls[:ON_DEMAND_LIMIT]]
        try:
            await until(lambda: connected == ON_DEMAND_LIMIT, "the capped probes to connect")
            refused = await fetch(urls[-1])
            assert refused.status == 429
            assert "on-demand probes are already running" in refused.text
        finally:
            release.set()
            answers = await asyncio.gather(*waiting)
    assert [a.status for a in answers] == [200] * ON_DEMAND_LIMIT
    assert all(sample(a.text, "smtp_tls_probe_success") == 1 for a in answers)
    assert connected == ON_DEMAND_LIMIT


# -- mail domains -----------------------------------------------------------------------------


class CannedChecker:
    """A domain checker that answers with a result made beforehand (None: never answers)."""

    def __init__(self, result: DomainResult | None) -> None:
        self.result = result

    async def check(self, *, probe_mx: bool = True) -> DomainResult:
        if self.result is None:
            await asyncio.Event().wait()  # the check that never finishes
        assert self.result is not None
        return self.result

    async def probe_mx(self, result: DomainResult) -> DomainResult:
        return result


DOMAINS_CONFIG = """\
targets: []
domains:
  - {name: example.test, labels: {site: fra1}}
  - broken.example.test
  - pending.example.test
"""


@pytest.fixture
async def domains_exporter(tmp_path: Path) -> AsyncIterator[Exporter]:
    canned = {"example.test": enforced(), "broken.example.test": broken()}
    path = tmp_path / "config.yml"
    path.write_text(DOMAINS_CONFIG)

    def make_checker(domain: DomainConfig, dns: DnsConfig) -> CannedChecker:
        return CannedChecker(canned.get(domain.name))

    service = Service(load_config(str(path)), str(path), make_checker=make_checker)
    server = HttpServer("127.0.0.1", 0, service)
    async with running(service, server):
        await until(lambda: len(service.snapshot().domain_results) == 2, "two domain results")
        yield Exporter(service, server.url, path)


async def test_landing_page_lists_every_domain(domains_exporter: Exporter) -> None:
    page = (await fetch(domains_exporter.url + "/")).text
    assert "<h2>Mail domains (3)</h2>" in page
    rows = {
        name: next(line for line in page.splitlines() if f"<td>{name}</td>" in line)
        for name in ("example.test", "broken.example.test", "pending.example.test")
    }
    # enforce, policy valid, no failure reason, 2 MX hosts of which 1 compliant, TLS-RPT valid,
    # and two problems (an MX outside the policy, and not compliant)
    assert (
        '<td class="ok">enforce</td><td>yes</td><td></td><td>2</td><td>1 of 2</td>'
        '<td>valid</td><td class="failed">2</td>'
    ) in rows["example.test"]
    assert 'href="debug?domain=example.test">report</a>' in rows["example.test"]
    assert (
        '<td class="failed">invalid</td><td>no</td><td>http_status</td><td>null MX</td>'
        '<td></td><td>invalid</td><td class="failed">2</td>'
    ) in rows["broken.example.test"]
    assert '<td class="pending">pending</td>' in rows["pending.example.test"]
    assert "debug?domain" not in rows["pending.example.test"]


async def test_debug_shows_a_domain_report(domains_exporter: Exporter) -> None:
    resp = await fetch(domains_exporter.url + "/debug?domain=example.test")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    report = resp.text
    assert report.startswith("Last scheduled check of example.test, started ")
    assert "PROBLEMS (2)" in report
    assert "MTA-STS: enforce" in report
    assert "10 mail.example.test  policy match: yes  compliant: yes" in report
    assert "Probe of backup.example.net:25: OK" in report


async def test_debug_refuses_unknown_and_unchecked_domains(domains_exporter: Exporter) -> None:
    resp = await fetch(domains_exporter.url + "/debug?domain=nope.example.test")
    assert (resp.status, resp.text) == (
        404,
        "no configured mail domain named 'nope.example.test'\n",
    )
    resp = await fetch(domains_exporter.url + "/debug?domain=pending.example.test")
    assert (resp.status, resp.text) == (
        404,
        "pending.example.test: its first check has not finished yet\n",
    )
    resp = await fetch(domains_exporter.url + "/debug")
    assert (resp.status, resp.text) == (400, "missing ?target=NAME or ?domain=NAME\n")


async def test_metrics_of_domains(domains_exporter: Exporter) -> None:
    text = await domains_exporter.metrics()
    enforce = {"domain": "example.test", "site": "fra1", "mode": "enforce"}
    assert sample(text, "smtp_tls_mta_sts_mode", **enforce) == 1
    failure = {"domain": "broken.example.test", "reason": "http_status"}
    assert sample(text, "smtp_tls_mta_sts_policy_fetch_failure_info", **failure) == 1
    assert sample(text, "smtp_tls_exporter_domains") == 3
    assert sample(text, "smtp_tls_mx_count", domain="pending.example.test") is None
