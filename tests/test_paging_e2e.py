"""Paged, end to end: the exporter probes the real Postfix and checks mail domains served by the
real dnsmasq and nginx of tests/fixtures/zone.py (their MX hosts are that Postfix), a real
Prometheus scrapes it and evaluates grafana/alerts.yml, and a real Alertmanager delivers the alerts
to a webhook receiver in this test. Over the same stack, every query of grafana/dashboard.json
returns data through Prometheus' HTTP API, and every metric the dashboard and the rules name is
one the running exporter emits.

To be fast, Prometheus loads a copy of alerts.yml with every `for:` at 0s and its groups evaluated
every second; expressions, labels and annotations are the shipped ones (a test below checks
that). The shipped `for:` durations are what promtool's unit tests (test_alerts.py) exercise.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import need
from tests.fixtures.certs import SERVER_NAME
from tests.fixtures.dns import PoolDns
from tests.fixtures.postfix import PostfixServer
from tests.fixtures.zone import MailDomains
from tests.test_alerts import ALERTS, metric_names, rule_groups
from tests.test_dashboard import (
    BUILTINS,
    dashboard_metric_names,
    label_values_query,
    load_dashboard,
    queries,
    substitute,
    variables,
)
from tests.test_service_e2e import (
    PROMETHEUS,
    ExporterProcess,
    exporter_process,
    free_port,
    http,
    query,
    samples,
    value,
)

T = TypeVar("T")
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
DEADLINE = 30.0
POLL = 0.2  # seconds between two looks at a condition that has a deadline
JOB = "smtp_tls"
# Postfix listeners probed, and each target's verify policy.
TARGETS = {
    "relay_25": "report",
    "expiring_soon": "report",  # certificate expires in 5 days
    "no_starttls": "report",  # STARTTLS not offered
    "expired": "required",  # expired 10 days ago
    "wrong_name": "required",  # trusted, for another name
    "submission_587": "required",  # takes MAIL FROM before STARTTLS
    "submission_encrypt": "required",  # refuses it (530)
    "modern_tls": "report",  # TLS 1.2 and up only
}
# The opt-in checks of some of them (docs/checks.md).
CHECKS = {
    "relay_25": "{starttls_injection: true, protocols: true}",  # accepts TLS 1.0 and 1.1
    "no_starttls": "{starttls_injection: true}",  # no verdict: no STARTTLS
    "submission_587": "{submission_requires_tls: true}",
    "submission_encrypt": "{submission_requires_tls: true}",
    "modern_tls": "{protocols: true}",
}
# A target with all_addresses: its name has relay_25's address and dead ones (pool_dns).
POOL = "pool"
# Mail domains of tests/fixtures/zone.py checked (NAME.example.test), chosen so that every panel of
# the Mail domains section has data and the domain alerts fire. Their MX hosts are mail.example.test
# (the relay_25 listener) and expired-mx.example.test (the expired one).
DOMAINS = {
    "enforce": "enforce",  # everything right
    "mismatch": "enforce",  # the policy's mx line misses the MX
    "expired": "enforce",  # the MX's certificate has expired
    "nopolicy": "invalid",  # the policy host answers 404
    "badtxt": "invalid",  # a bad _mta-sts id, an ftp: TLS-RPT rua
    "nullmx": "absent",  # a null MX, no MTA-STS
}
EXPIRED_MX = "expired-mx.example.test"
# (alert, what it is about) that the stack must page, and nothing else: the target, else the
# domain and, for an alert about one MX host, the host.
PAGED = {
    ("SmtpTlsCertificateExpiringCritical", "expiring_soon"),
    ("SmtpTlsStartTLSNotAdvertised", "no_starttls"),
    ("SmtpTlsCertificateExpired", "expired"),
    ("SmtpTlsCertificateVerificationFailed", "wrong_name"),
    # the endpoint alerts cover MX hosts too
    ("SmtpTlsCertificateExpired", f"{EXPIRED_MX}:25"),
    ("SmtpTlsMtaStsEnforcedMxNotCompliant", f"expired.example.test {EXPIRED_MX}"),
    ("SmtpTlsMtaStsMxNotInPolicy", "mismatch.example.test mail.example.test"),
    ("SmtpTlsMtaStsPolicyInvalid", "nopolicy.example.test"),
    ("SmtpTlsMtaStsPolicyInvalid", "badtxt.example.test"),
    ("SmtpTlsTlsRptRecordInvalid", "badtxt.example.test"),
    # the opt-in checks, and one bad node behind a name
    ("SmtpTlsLegacyTLSAccepted", "relay_25"),
    ("SmtpTlsSubmissionDoesNotRequireTLS", "submission_587"),
    ("SmtpTlsAddressFailing", POOL),  # its dead addresses, while relay_25's address works
    ("SmtpTlsLegacyTLSAccepted", POOL),  # the address that works is relay_25's
}


def subject(labels: dict[str, str]) -> str:
    """What an alert is about, as PAGED names it."""
    if labels.get("target"):
        return labels["target"]
    return " ".join(labels[k] for k in ("domain", "mx") if labels.get(k))


def wait_for(
    get: Callable[[], T],
    check: Callable[[T], object],
    what: str,
    explain: Callable[[T], str] = str,
) -> T:
    """Call `get` until `check` accepts its answer; fail after DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while True:
        got = get()
        if check(got):
            return got
        if time.monotonic() > end:
            pytest.fail(f"timed out after {DEADLINE:.0f}s waiting for {what}:\n{explain(got)}")
        time.sleep(POLL)


def scrape(exp: ExporterProcess) -> str:
    status, text = http("GET", exp.url + "/metrics", timeout=5)
    assert status == 200
    return text


def exporter_config(postfix: PostfixServer, world: MailDomains, pool: PoolDns) -> str:
    lines = ["defaults:", "  interval: 5s", "  timeout: 5s", "  ehlo_name: exporter.test"]
    # The zone's name server and the CA of the policy hosts and MX hosts: through the config only.
    # The pool's name server comes second: the zone's answers REFUSED for its name.
    lines += [f"  ca_file: {world.ca_file}", "dns:"]
    servers = f'"{world.dns.host}:{world.dns.port}", "{pool.server.host}:{pool.server.port}"'
    lines += [f"  nameservers: [{servers}]", "  timeout: 2s"]
    lines.append("targets:")
    for name, verify in TARGETS.items():
        lst = postfix.listener(name)
        checks = f", checks: {CHECKS[name]}" if name in CHECKS else ""
        lines.append(
            f"  - {{name: {name}, host: {lst.host}, port: {lst.port}, mode: {lst.mode}, "
            f"server_name: {lst.server_name}, ca_file: {lst.ca_file}, verify: {verify}{checks}}}"
        )
    lines.append(
        f"  - {{name: {POOL}, host: {pool.name}, port: 25, server_name: {SERVER_NAME}, "
        f"ca_file: {postfix.ca_file}, all_addresses: true, checks: {{protocols: true}}}}"
    )
    lines.append("domains:")
    lines += [f"  - {world.domain(name)}" for name in DOMAINS]
    return "\n".join(lines) + "\n"


def fast_rules() -> dict[str, Any]:
    """alerts.yml with every `for:` at 0s, evaluated every second."""
    groups = copy.deepcopy(rule_groups())
    for group in groups:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    return {"groups": groups}


def test_fast_rules_differ_from_the_shipped_ones_only_in_timing() -> None:
    shipped, fast = rule_groups(), fast_rules()["groups"]
    assert [g["name"] for g in fast] == [g["name"] for g in shipped]
    for old_group, new_group in zip(shipped, fast, strict=True):
        assert new_group["interval"] == "1s"
        for old, new in zip(old_group["rules"], new_group["rules"], strict=True):
            assert {k: v for k, v in new.items() if k != "for"} == {
                k: v for k, v in old.items() if k != "for"
            }
            assert new["for"] == "0s"


def prometheus_config(exporter: str, alertmanager: str, rules: Path) -> str:
    return f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{alertmanager}"]
scrape_configs:
  - job_name: {JOB}
    static_configs:
      - targets: ["{exporter}"]
"""


def alertmanager_config(webhook: str) -> str:
    return f"""\
route:
  receiver: webhook
  group_by: [alertname, target, domain]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: "{webhook}"
        send_resolved: false
"""


class Webhook:
    """An HTTP server on 127.0.0.1 that keeps every notification Alertmanager posts to it."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook._lock:
                    hook.payloads.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [alert for payload in self.payloads for alert in payload["alerts"]]

    def paged(self) -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], subject(a["labels"]))
            for a in self.alerts()
            if a["status"] == "firing"
        }

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def daemon(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=log.parent, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{log.stem} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return http("GET", url + "/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(ready, bool, f"{url}/-/ready", lambda _: log.read_text()[-3000:])


def installed(path: str) -> bool:
    return os.access(path, os.X_OK) or shutil.which(Path(path).name) is not None


@dataclass(frozen=True)
class Stack:
    prometheus: str
    alertmanager: str
    webhook: Webhook


@pytest.fixture(scope="module")
def exporter(
    postfix: PostfixServer,
    mail_domains: MailDomains,
    pool_dns: PoolDns,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ExporterProcess]:
    path = tmp_path_factory.mktemp("paging") / "config.yml"
    path.write_text(exporter_config(postfix, mail_domains, pool_dns))
    stamp = "smtp_tls_domain_last_check_timestamp_seconds"
    with exporter_process(path) as exp:
        wait_for(
            lambda: scrape(exp),
            lambda text: (
                all(
                    value(text, "smtp_tls_probe_success", target=name) is not None
                    for name in [*TARGETS, POOL]
                )
                and all(
                    value(text, "smtp_tls_check_last_run_timestamp_seconds", target=name)
                    is not None
                    for name in CHECKS
                )
                # a domain's MX probes are recorded with its check
                and all(value(text, stamp, domain=mail_domains.domain(n)) for n in DOMAINS)
            ),
            "a result for every Postfix target and every mail domain, a run of every check",
        )
        yield exp


@pytest.fixture(scope="module")
def stack(exporter: ExporterProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need(installed(PROMETHEUS), f"{PROMETHEUS} is not installed (apt-get install prometheus)")
    need(
        installed(ALERTMANAGER),
        f"{ALERTMANAGER} is not installed (apt-get install prometheus-alertmanager)",
    )
    tmp = tmp_path_factory.mktemp("stack")
    rules = tmp / "alerts-fast.yml"
    rules.write_text(yaml.safe_dump(fast_rules(), sort_keys=False))
    am_port, prom_port = free_port(), free_port()
    am_url, prom_url = f"http://127.0.0.1:{am_port}", f"http://127.0.0.1:{prom_port}"
    with Webhook() as webhook:
        (tmp / "alertmanager.yml").write_text(alertmanager_config(webhook.url))
        (tmp / "prometheus.yml").write_text(
            prometheus_config(exporter.url.removeprefix("http://"), f"127.0.0.1:{am_port}", rules)
        )
        am_argv = [
            ALERTMANAGER,
            f"--config.file={tmp / 'alertmanager.yml'}",
            f"--storage.path={tmp / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",  # no gossip: nothing listens beyond loopback
        ]
        prom_argv = [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ]
        am_log, prom_log = tmp / "alertmanager.log", tmp / "prometheus.log"
        with daemon(am_argv, am_log) as am, daemon(prom_argv, prom_log) as prom:
            wait_ready(am_url, am, am_log)
            wait_ready(prom_url, prom, prom_log)
            yield Stack(prometheus=prom_url, alertmanager=am_url, webhook=webhook)


# -- metric names -----------------------------------------------------------------------------


def test_dashboard_and_rules_name_only_metrics_the_exporter_emits(
    exporter: ExporterProcess,
) -> None:
    emitted = {name for name, _, _ in samples(scrape(exporter))}
    from_dashboard = dashboard_metric_names(load_dashboard())
    from_rules = set().union(*(metric_names(rule["expr"]) for rule in ALERTS.values()))
    assert len(from_dashboard) > 10 and len(from_rules) > 5  # the reading found them
    assert not from_dashboard - emitted, f"dashboard: not emitted: {from_dashboard - emitted}"
    assert not from_rules - emitted, f"alerts.yml: not emitted: {from_rules - emitted}"


# -- the dashboard through Prometheus -----------------------------------------------------------


def panel_values() -> dict[str, str]:
    """Template variables as a user sees them: this job, every target, every domain."""
    found = variables(load_dashboard())
    every = {name: found[name]["allValue"] for name in ("target", "domain")}
    return {"job": JOB, **every, **BUILTINS}


def panel_queries() -> dict[tuple[str, str], str]:
    """(panel title, refId) -> the query as Grafana sends it to Prometheus."""
    values = panel_values()
    return {
        (panel["title"], target["refId"]): substitute(target["expr"], values)
        for panel, target in queries(load_dashboard())
    }


def test_every_dashboard_panel_query_returns_data(stack: Stack) -> None:
    prom = stack.prometheus
    pending = panel_queries()

    def empty() -> dict[tuple[str, str], str]:
        for key, expr in list(pending.items()):
            if query(prom, expr):
                del pending[key]
        return pending

    def explain(left: dict[tuple[str, str], str]) -> str:
        lines = []
        for (title, ref), expr in left.items():
            url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            lines.append(f"{title} {ref}: {expr}\n  -> {http('GET', url, timeout=5)}")
        return "\n".join(lines)

    wait_for(empty, lambda left: not left, "data for every panel query", explain)

    # and the data says what the Postfix listeners are
    q = panel_queries()
    failing = query(prom, q[("Failing endpoints", "A")])
    assert {
        (r["metric"]["target"], r["metric"]["stage"], r["metric"]["reason"]) for r in failing
    } == {
        ("no_starttls", "starttls", "starttls_not_advertised"),
        ("expired", "certificate", "expired"),
        ("wrong_name", "certificate", "hostname_mismatch"),
        (POOL, "connect", "connection_refused"),  # its dead addresses
    }
    expiring = query(prom, q[("Certificates expiring soonest", "A")])
    # the expired listener, probed as a target and as the MX of expired.example.test, first
    soonest = [r["metric"]["target"] for r in expiring][:3]
    assert set(soonest[:2]) == {"expired", f"{EXPIRED_MX}:25"} and soonest[2] == "expiring_soon"
    assert 4 < float(expiring[2]["value"][1]) < 5
    no_starttls = query(prom, q[("STARTTLS not advertised", "A")])
    assert [r["metric"]["target"] for r in no_starttls] == ["no_starttls"]
    details = query(prom, q[("Certificate details", "A")])
    verdicts = {
        (r["metric"]["target"], r["metric"].get("domain")): r["metric"]["reason"] for r in details
    }
    # one row per MX host and domain: mail.example.test is the MX of four of them
    mx_rows = {("mail.example.test:25", f"{n}.example.test"): "ok" for n in DOMAINS}
    del mx_rows[("mail.example.test:25", "expired.example.test")]
    del mx_rows[("mail.example.test:25", "nullmx.example.test")]
    assert verdicts == {
        ("relay_25", None): "ok",
        ("expiring_soon", None): "ok",
        ("expired", None): "expired",
        ("wrong_name", None): "hostname_mismatch",
        ("submission_587", None): "ok",
        ("submission_encrypt", None): "ok",
        ("modern_tls", None): "ok",
        (POOL, None): "ok",
        (f"{EXPIRED_MX}:25", "expired.example.test"): "expired",
        **mx_rows,
    }
    assert all(r["metric"]["subject"] and r["metric"]["issuer"] for r in details)
    versions = query(prom, q[("TLS versions in use", "A")])
    assert {r["metric"]["version"] for r in versions} <= {"TLS 1.2", "TLS 1.3"}

    # the Security checks section: relay_25 (and the pool's good address) accept TLS 1.0 and 1.1
    assert float(query(prom, q[("Accepting TLS 1.0 or 1.1", "A")])[0]["value"][1]) == 2
    assert float(query(prom, q[("STARTTLS injection", "A")])[0]["value"][1]) == 0
    assert float(query(prom, q[("Submission not requiring TLS", "A")])[0]["value"][1]) == 1
    addresses = query(prom, q[("Every address", "A")])
    assert sorted(float(r["value"][1]) for r in addresses)[-1] == 1  # the one that works
    assert {r["metric"]["target"] for r in addresses} == {POOL}
    no_verdict = query(prom, q[("Checks without a verdict", "A")])
    assert {(r["metric"]["target"], r["metric"]["check"]) for r in no_verdict} == {
        ("no_starttls", "starttls_injection"),
        (POOL, "protocols"),
    }

    # the Mail domains section
    domains = query(prom, q[("Domains", "A")])
    modes = {r["metric"]["domain"]: r["metric"]["mode"] for r in domains}
    assert modes == {f"{n}.example.test": mode for n, mode in DOMAINS.items()}
    lookups = {r["metric"]["domain"]: r["metric"]["status"] for r in domains}
    assert lookups["nullmx.example.test"] == "null"
    assert {s for d, s in lookups.items() if d != "nullmx.example.test"} == {"mx"}
    failures = query(prom, q[("MTA-STS check failures", "A")])
    assert {(r["metric"]["domain"], r["metric"]["reason"]) for r in failures} == {
        ("nopolicy.example.test", "http_status"),
        ("badtxt.example.test", "bad_record"),
    }

    def by_mx(ref: str) -> dict[tuple[str, str], float]:
        rows = query(prom, q[("MX hosts", ref)])
        return {(r["metric"]["domain"], r["metric"]["mx"]): float(r["value"][1]) for r in rows}

    assert by_mx("A") == {  # in policy: only where the policy is valid
        ("enforce.example.test", "mail.example.test"): 1,
        ("mismatch.example.test", "mail.example.test"): 0,
        ("expired.example.test", EXPIRED_MX): 1,
    }
    compliant = by_mx("B")
    assert compliant[("expired.example.test", EXPIRED_MX)] == 0
    assert compliant[("enforce.example.test", "mail.example.test")] == 1
    timeline = query(prom, q[("MTA-STS mode over time", "A")])
    codes = {r["metric"]["domain"]: float(r["value"][1]) for r in timeline}
    assert codes == {
        "enforce.example.test": 3,
        "mismatch.example.test": 3,
        "expired.example.test": 3,
        "nopolicy.example.test": -1,
        "badtxt.example.test": -1,
        "nullmx.example.test": 0,
    }


def test_variable_queries_list_jobs_and_targets(stack: Stack) -> None:
    found = variables(load_dashboard())

    def label_values(name: str) -> set[str]:
        selector, label = label_values_query(found[name])
        match = substitute(selector, {"job": JOB})
        url = f"{stack.prometheus}/api/v1/series?" + urllib.parse.urlencode({"match[]": match})
        status, body = http("GET", url, timeout=5)
        assert status == 200, body
        return {series[label] for series in json.loads(body)["data"] if label in series}

    assert wait_for(lambda: label_values("job"), bool, "the job variable's values") == {JOB}
    mx_targets = {"mail.example.test:25", f"{EXPIRED_MX}:25"}
    assert label_values("target") == set(TARGETS) | mx_targets | {POOL}
    assert label_values("domain") == {f"{n}.example.test" for n in DOMAINS}


# -- paged ----------------------------------------------------------------------------------


def test_endpoint_and_mail_domain_alerts_are_paged_through_alertmanager(stack: Stack) -> None:
    hook = stack.webhook
    wait_for(
        hook.paged,
        lambda got: got >= PAGED,
        "the expected alerts at the webhook",
        lambda got: f"paged: {sorted(got)}\nwanted: {sorted(PAGED)}",
    )
    assert hook.paged() == PAGED, "something else was paged too"

    status, body = http("GET", f"{stack.prometheus}/api/v1/alerts", timeout=5)
    assert status == 200
    firing = {
        (a["labels"]["alertname"], subject(a["labels"]))
        for a in json.loads(body)["data"]["alerts"]
        if a["state"] == "firing"
    }
    assert firing == PAGED

    alerts = {(a["labels"]["alertname"], subject(a["labels"])): a for a in hook.alerts()}
    expiring = alerts[("SmtpTlsCertificateExpiringCritical", "expiring_soon")]
    assert expiring["labels"]["severity"] == "critical"
    summary = expiring["annotations"]["summary"]
    assert re.fullmatch(r"Certificate of expiring_soon expires in (4\.\d|5\.0) days", summary)
    starttls = alerts[("SmtpTlsStartTLSNotAdvertised", "no_starttls")]
    assert starttls["labels"]["severity"] == "critical"
    assert starttls["annotations"]["summary"] == "no_starttls does not advertise STARTTLS"
    host = starttls["labels"]["host"]
    assert (
        f"no_starttls ({host} port 25) did not offer STARTTLS"
        in (starttls["annotations"]["description"])
    )
    assert "(smtp_tls_starttls_advertised = 0)" in starttls["annotations"]["description"]

    # the outage MTA-STS monitoring is for, with its cause looked up from the MX host's probe
    outage = alerts[("SmtpTlsMtaStsEnforcedMxNotCompliant", f"expired.example.test {EXPIRED_MX}")]
    assert outage["labels"]["severity"] == "critical"
    assert outage["annotations"]["summary"] == (
        f"MX {EXPIRED_MX} of expired.example.test fails its enforced MTA-STS policy"
    )
    assert outage["annotations"]["description"].endswith(
        "MTA-STS senders refuse to deliver to it. Its certificate: expired."
    )
    expired_mx = alerts[("SmtpTlsCertificateExpired", f"{EXPIRED_MX}:25")]
    assert expired_mx["labels"]["domain"] == "expired.example.test"
    invalid = alerts[("SmtpTlsMtaStsPolicyInvalid", "nopolicy.example.test")]
    assert invalid["labels"]["reason"] == "http_status"

    # Alertmanager itself holds them as active alerts
    status, body = http("GET", f"{stack.alertmanager}/api/v2/alerts", timeout=5)
    assert status == 200
    active = {
        (a["labels"]["alertname"], subject(a["labels"]))
        for a in json.loads(body)
        if a["status"]["state"] == "active"
    }
    assert active >= PAGED
