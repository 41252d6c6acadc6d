"""The collector: hand-built results in, samples and exposition out; docs/metrics.md agrees."""

from __future__ import annotations

import dataclasses
import platform
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.checks.model import CheckName
from exporter.config import RESERVED_LABELS, parse_config
from exporter.domains.config import DomainConfig
from exporter.domains.model import (
    CheckFailure,
    CheckReason,
    DomainResult,
    MxCheck,
    MxHost,
    MxSet,
    MxStatus,
    Policy,
    StsMode,
    StsRecord,
    StsResult,
    StsState,
    TlsRptRecord,
    TlsRptResult,
)
from exporter.model import (
    CertFacts,
    Failure,
    Phases,
    ProbeResult,
    Reason,
    SmtpFacts,
    Stage,
    Target,
    TlsFacts,
    Verification,
    VerifyPolicy,
    VerifyReason,
)
from exporter.service.collector import SmtpTlsCollector
from exporter.service.manners import Manners
from exporter.service.service_metrics import ServiceCollector
from exporter.service.shard_metrics import ShardCollector
from exporter.service.state import ServiceState, Snapshot
from exporter.shard import Shard
from exporter.web.config import WebConfig
from exporter.web.guard import WebGuard
from tests import check_results, dane_results

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
NOW = 1_760_000_000.0  # 2025-10-09, the scrape time unless a test moves the clock
DAY = 86400.0

LEAF = CertFacts(
    subject="CN=mail.example.test,O=Example Mail",
    subject_cn="mail.example.test",
    issuer="CN=Example Issuing CA,O=Example",
    serial="4F2A9C0B1D7E",
    not_before=NOW - 30 * DAY,
    not_after=NOW + 60 * DAY,
    fingerprint_sha256="3f5d0c9a27e4b1c8d6f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2",
    sans_dns=("mail.example.test",),
    key_type="EC",
    key_bits=256,
    signature_algorithm="ecdsa-with-SHA256",
)
INTERMEDIATE = CertFacts(
    subject="CN=Example Issuing CA,O=Example",
    subject_cn="Example Issuing CA",
    issuer="CN=Example Root CA,O=Example",
    serial="1000",
    not_before=NOW - 400 * DAY,
    not_after=NOW + 45 * DAY,  # expires before the leaf
    fingerprint_sha256="a1" * 32,
    key_type="RSA",
    key_bits=2048,
    signature_algorithm="sha256WithRSAEncryption",
)
EXPIRED_LEAF = CertFacts(
    subject="CN=localhost",
    subject_cn="localhost",
    issuer="CN=localhost",
    serial="01",
    not_before=NOW - 367 * DAY,
    not_after=NOW - 2 * DAY,
    fingerprint_sha256="0b" * 32,
    sans_dns=("localhost",),
    key_type="RSA",
    key_bits=None,
    signature_algorithm="sha256WithRSAEncryption",
    self_issued=True,
)
TLS13 = TlsFacts(version="TLS 1.3", cipher="TLS_AES_256_GCM_SHA384", cipher_bits=256)

RELAY = Target.create("localhost", 25, server_name="mail.example.test", labels={"site": "fra1"})
SUBMISSION = Target.create("localhost", 587)
SUBMISSIONS = Target.create("127.0.0.1", 465, name="submissions")
UNPROBED = Target.create("localhost", 2525)
# The series of a target's config: there before its first probe too.
CONFIG_SERIES = {"smtp_tls_probe_interval_seconds", "smtp_tls_cert_verify_required"}


def starttls_ok(target: Target = RELAY) -> ProbeResult:
    """A relay with STARTTLS that offers AUTH in the clear; certificate fine."""
    return ProbeResult(
        target=target,
        started_at=NOW - 20,
        success=True,
        peer_address="127.0.0.1",
        address_family="ipv4",
        phases=Phases(
            resolve=0.0002,
            connect=0.0004,
            greeting=0.0021,
            ehlo=0.0015,
            starttls=0.0008,
            tls_handshake=0.0123,
            total=0.0201,
        ),
        smtp=SmtpFacts(
            greeting_code=220,
            greeting="mail.example.test ESMTP Postfix",
            starttls_advertised=True,
            auth_before_tls=("PLAIN", "LOGIN"),
            extensions_before_tls=("PIPELINING", "SIZE", "STARTTLS", "AUTH", "8BITMIME"),
            extensions_after_tls=("PIPELINING", "SIZE", "AUTH", "8BITMIME"),
            auth_after_tls=("PLAIN", "LOGIN"),
        ),
        tls=TLS13,
        certificate=LEAF,
        chain=(LEAF, INTERMEDIATE),
        verification=Verification(True, True, VerifyReason.OK, trust_store="system"),
    )


def refused(target: Target = SUBMISSION) -> ProbeResult:
    return ProbeResult(
        target=target,
        started_at=NOW - 5,
        success=False,
        failure=Failure(Stage.CONNECT, Reason.CONNECTION_REFUSED, "127.0.0.1 port 587: refused"),
        peer_address="127.0.0.1",
        address_family="ipv4",
        phases=Phases(resolve=0.0001, connect=0.0002, total=0.0004),
    )


def implicit_expired(target: Target = SUBMISSIONS) -> ProbeResult:
    """Implicit TLS with an expired self-signed certificate; verify required, so it fails."""
    return ProbeResult(
        target=target,
        started_at=NOW - 40,
        success=False,
        failure=Failure(Stage.CERTIFICATE, Reason.EXPIRED, "leaf certificate expired"),
        peer_address="127.0.0.1",
        address_family="ipv4",
        phases=Phases(connect=0.0003, tls_handshake=0.009, greeting=0.001, ehlo=0.0007, total=0.02),
        smtp=SmtpFacts(greeting_code=220, greeting="localhost ESMTP"),
        tls=TlsFacts(version="TLS 1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256", cipher_bits=128),
        certificate=EXPIRED_LEAF,
        chain=(EXPIRED_LEAF,),
        verification=Verification(False, True, VerifyReason.EXPIRED, "leaf certificate expired"),
    )


def implicit_ok(target: Target = SUBMISSIONS) -> ProbeResult:
    return ProbeResult(
        target=target,
        started_at=NOW - 3,
        success=True,
        peer_address="127.0.0.1",
        address_family="ipv4",
        phases=Phases(
            connect=0.0003, tls_handshake=0.0101, greeting=0.0012, ehlo=0.0009, total=0.0131
        ),
        smtp=SmtpFacts(greeting_code=220, greeting="mail.example.test ESMTP"),
        tls=TLS13,
        certificate=LEAF,
        chain=(LEAF,),
        verification=Verification(True, True, VerifyReason.OK),
    )


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_state(*results: ProbeResult, targets: tuple[Target, ...] | None = None) -> ServiceState:
    state = ServiceState()
    state.set_targets(targets if targets is not None else tuple(r.target for r in results))
    for r in results:
        state.record(r, lag=0.0)
    return state


def registry_for(state: ServiceState, clock: Clock | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SmtpTlsCollector(state.snapshot, clock=clock or Clock()))
    return registry


def labels(target: Target, **extra: str) -> dict[str, str]:
    base = {"target": target.name, "host": target.host, "port": str(target.port)}
    base["mode"] = target.mode.value
    return {**dict(target.labels), **base, **extra}


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]


def names_for(registry: CollectorRegistry, target: Target) -> set[str]:
    return {n for n, lab, _ in samples(registry) if lab.get("target") == target.name}


def test_starttls_success_values() -> None:
    reg = registry_for(make_state(starttls_ok()))
    v = reg.get_sample_value
    lab = labels(RELAY)
    assert lab["site"] == "fra1"
    assert v("smtp_tls_probe_success", lab) == 1
    assert v("smtp_tls_last_probe_timestamp_seconds", lab) == NOW - 20
    assert v("smtp_tls_probe_duration_seconds", {**lab, "phase": "tls_handshake"}) == 0.0123
    assert v("smtp_tls_probe_duration_seconds", {**lab, "phase": "total"}) == 0.0201
    assert v("smtp_tls_version_info", {**lab, "version": "TLS 1.3"}) == 1
    assert v("smtp_tls_cipher_info", {**lab, "cipher": "TLS_AES_256_GCM_SHA384"}) == 1
    assert v("smtp_tls_starttls_advertised", lab) == 1
    assert v("smtp_tls_auth_before_tls", lab) == 1
    assert v("smtp_tls_plaintext_after_starttls", lab) == 0
    assert v("smtp_tls_cert_not_after_timestamp_seconds", lab) == NOW + 60 * DAY
    assert v("smtp_tls_cert_not_before_timestamp_seconds", lab) == NOW - 30 * DAY
    assert v("smtp_tls_cert_expiry_days", lab) == pytest.approx(60.0)
    # The intermediate expires first.
    assert v("smtp_tls_chain_earliest_not_after_timestamp_seconds", lab) == NOW + 45 * DAY
    assert v("smtp_tls_cert_trusted", lab) == 1
    assert v("smtp_tls_cert_hostname_match", lab) == 1
    assert v("smtp_tls_cert_verify_info", {**lab, "reason": "ok"}) == 1
    cert_labels = {
        **lab,
        "subject": "CN=mail.example.test,O=Example Mail",
        "issuer": "CN=Example Issuing CA,O=Example",
        "serial": "4F2A9C0B1D7E",
        "fingerprint_sha256": LEAF.fingerprint_sha256,
        "key_type": "EC",
        "key_bits": "256",
        "signature_algorithm": "ecdsa-with-SHA256",
    }
    assert v("smtp_tls_cert_info", cert_labels) == 1
    assert "smtp_tls_probe_failure_info" not in names_for(reg, RELAY)


def test_every_phase_that_ran_and_no_other() -> None:
    reg = registry_for(make_state(starttls_ok(), refused()))
    got: dict[str, set[str]] = {}
    for n, lab, _ in samples(reg):
        if n == "smtp_tls_probe_duration_seconds":
            got.setdefault(lab["target"], set()).add(lab["phase"])
    assert got[RELAY.name] == {
        "resolve",
        "connect",
        "greeting",
        "ehlo",
        "starttls",
        "tls_handshake",
        "total",
    }
    assert got[SUBMISSION.name] == {"resolve", "connect", "total"}


def test_failure_info_present_only_while_failing() -> None:
    state = make_state(refused(), starttls_ok())
    reg = registry_for(state)
    lab = labels(SUBMISSION)
    assert reg.get_sample_value("smtp_tls_probe_success", lab) == 0
    failure = {**lab, "stage": "connect", "reason": "connection_refused"}
    assert reg.get_sample_value("smtp_tls_probe_failure_info", failure) == 1
    failing = [lab for n, lab, _ in samples(reg) if n == "smtp_tls_probe_failure_info"]
    assert [f["target"] for f in failing] == [SUBMISSION.name]
    # The next probe succeeds: the failure series goes away.
    state.record(ProbeResult(SUBMISSION, NOW, True, phases=Phases(total=0.01), tls=TLS13), lag=0.0)
    assert reg.get_sample_value("smtp_tls_probe_failure_info", failure) is None
    assert reg.get_sample_value("smtp_tls_probe_success", lab) == 1


def test_connect_failure_has_no_session_or_certificate_series() -> None:
    reg = registry_for(make_state(refused()))
    assert names_for(reg, SUBMISSION) == {
        "smtp_tls_probe_success",
        "smtp_tls_probe_failure_info",
        "smtp_tls_probe_duration_seconds",
        "smtp_tls_last_probe_timestamp_seconds",
        *CONFIG_SERIES,
    }


def test_certificate_series_present_when_verification_failed() -> None:
    reg = registry_for(make_state(implicit_expired()))
    v = reg.get_sample_value
    lab = labels(SUBMISSIONS)
    assert v("smtp_tls_probe_success", lab) == 0
    assert v("smtp_tls_probe_failure_info", {**lab, "stage": "certificate", "reason": "expired"})
    assert v("smtp_tls_cert_not_after_timestamp_seconds", lab) == NOW - 2 * DAY
    assert v("smtp_tls_cert_expiry_days", lab) == pytest.approx(-2.0)
    assert v("smtp_tls_chain_earliest_not_after_timestamp_seconds", lab) == NOW - 2 * DAY
    assert v("smtp_tls_cert_trusted", lab) == 0
    assert v("smtp_tls_cert_hostname_match", lab) == 1
    assert v("smtp_tls_cert_verify_info", {**lab, "reason": "expired"}) == 1
    info = [lab for n, lab, _ in samples(reg) if n == "smtp_tls_cert_info"]
    assert len(info) == 1 and info[0]["key_bits"] == "" and info[0]["serial"] == "01"
    assert v("smtp_tls_version_info", {**lab, "version": "TLS 1.2"}) == 1


def test_verification_problem_reported_without_failing() -> None:
    # verify: report (port 25): a self-signed certificate is shown, the probe still succeeds.
    result = starttls_ok()
    self_signed = Verification(False, False, VerifyReason.SELF_SIGNED, "self-signed")
    reg = registry_for(make_state(dataclasses.replace(result, verification=self_signed)))
    lab = labels(RELAY)
    assert reg.get_sample_value("smtp_tls_probe_success", lab) == 1
    assert reg.get_sample_value("smtp_tls_cert_verify_info", {**lab, "reason": "self_signed"}) == 1
    assert reg.get_sample_value("smtp_tls_cert_verify_info", {**lab, "reason": "ok"}) is None
    assert reg.get_sample_value("smtp_tls_cert_trusted", lab) == 0
    assert "smtp_tls_probe_failure_info" not in names_for(reg, RELAY)


def test_starttls_facts_only_for_starttls_targets_that_got_there() -> None:
    not_offered = ProbeResult(
        target=SUBMISSION,
        started_at=NOW,
        success=False,
        failure=Failure(Stage.STARTTLS, Reason.STARTTLS_NOT_ADVERTISED),
        phases=Phases(connect=0.001, greeting=0.002, ehlo=0.001, total=0.005),
        smtp=SmtpFacts(greeting_code=220, starttls_advertised=False, auth_before_tls=()),
    )
    reg = registry_for(make_state(not_offered, implicit_ok()))
    lab = labels(SUBMISSION)
    assert reg.get_sample_value("smtp_tls_starttls_advertised", lab) == 0
    assert reg.get_sample_value("smtp_tls_auth_before_tls", lab) == 0
    # No TLS reached: nothing to say about bytes after STARTTLS.
    assert reg.get_sample_value("smtp_tls_plaintext_after_starttls", lab) is None
    implicit = names_for(reg, SUBMISSIONS)
    assert "smtp_tls_version_info" in implicit
    assert not implicit & {
        "smtp_tls_starttls_advertised",
        "smtp_tls_auth_before_tls",
        "smtp_tls_plaintext_after_starttls",
    }


def test_plaintext_after_starttls_is_reported() -> None:
    result = starttls_ok()
    injected = dataclasses.replace(
        result, smtp=dataclasses.replace(result.smtp, plaintext_after_starttls=True)
    )
    reg = registry_for(make_state(injected))
    assert reg.get_sample_value("smtp_tls_plaintext_after_starttls", labels(RELAY)) == 1


def test_expiry_days_follow_the_clock() -> None:
    clock = Clock(NOW)
    reg = registry_for(make_state(starttls_ok()), clock)
    lab = labels(RELAY)
    assert reg.get_sample_value("smtp_tls_cert_expiry_days", lab) == pytest.approx(60.0)
    clock.now = NOW + 10.5 * DAY
    assert reg.get_sample_value("smtp_tls_cert_expiry_days", lab) == pytest.approx(49.5)
    clock.now = NOW + 61 * DAY
    assert reg.get_sample_value("smtp_tls_cert_expiry_days", lab) == pytest.approx(-1.0)
    # The timestamps do not move with the clock.
    assert reg.get_sample_value("smtp_tls_cert_not_after_timestamp_seconds", lab) == NOW + 60 * DAY


def test_unprobed_target_has_only_its_config_series_and_is_counted() -> None:
    state = make_state(starttls_ok(), targets=(RELAY, UNPROBED))
    reg = registry_for(state)
    assert names_for(reg, UNPROBED) == CONFIG_SERIES
    assert reg.get_sample_value("smtp_tls_probe_interval_seconds", labels(UNPROBED)) == 60
    assert reg.get_sample_value("smtp_tls_exporter_targets") == 2


def test_interval_and_verify_policy_come_from_the_config() -> None:
    slow = Target.create("localhost", 587, name="slow", interval=600.0)
    relaxed = Target.create("localhost", 465, name="relaxed", verify=VerifyPolicy.REPORT)
    state = make_state(starttls_ok(), refused(), targets=(RELAY, SUBMISSION, slow, relaxed))
    v = registry_for(state).get_sample_value
    got = {
        t.name: (
            v("smtp_tls_probe_interval_seconds", labels(t)),
            v("smtp_tls_cert_verify_required", labels(t)),
        )
        for t in (RELAY, SUBMISSION, slow, relaxed)
    }
    assert got == {
        RELAY.name: (60, 0),  # port 25: report
        SUBMISSION.name: (60, 1),  # port 587: required
        "slow": (600, 1),
        "relaxed": (60, 0),
    }


def test_removed_target_vanishes() -> None:
    state = make_state(starttls_ok(), refused())
    reg = registry_for(state)
    assert names_for(reg, SUBMISSION)
    state.set_targets((RELAY,))
    assert names_for(reg, SUBMISSION) == set()
    assert names_for(reg, RELAY)
    assert reg.get_sample_value("smtp_tls_exporter_targets") == 1


def test_changed_target_definition_hides_the_old_result() -> None:
    state = make_state(starttls_ok())
    reg = registry_for(state)
    moved = Target.create("127.0.0.1", 25, name=RELAY.name)  # same name, another host
    state.set_targets((moved,))
    assert names_for(reg, RELAY) == CONFIG_SERIES
    assert all(lab["host"] == "127.0.0.1" for _, lab, _ in samples(reg) if "target" in lab)
    state.record(starttls_ok(moved), lag=0.0)
    assert reg.get_sample_value("smtp_tls_probe_success", labels(moved)) == 1


def test_static_labels_on_every_endpoint_series_and_only_there() -> None:
    reg = registry_for(make_state(starttls_ok(), refused()))
    for name, lab, _ in samples(reg):
        if lab.get("target") == RELAY.name:
            assert lab["site"] == "fra1", name
        else:
            assert "site" not in lab, name


def test_every_exporter_label_is_reserved_in_the_config() -> None:
    # A static label named like one the collector sets would clash; the config must refuse it.
    state = make_state(starttls_ok(), refused(), implicit_expired())
    add_domains(state, (ENFORCED, enforced()), (BROKEN, broken()))
    reg = registry_for(state)
    used = {k for _, lab, _ in samples(reg) for k in lab} - {"site"}
    assert used <= RESERVED_LABELS


def test_exporter_metrics() -> None:
    state = make_state(starttls_ok(), refused(), implicit_expired())
    state.record(refused(), lag=1.5)
    state.record(refused(), lag=0.25)
    state.reload_success = False
    state.reload_success_timestamp = NOW - 100
    reg = registry_for(state)
    v = reg.get_sample_value
    build = {"version": __version__, "python_version": platform.python_version()}
    assert v("smtp_tls_exporter_build_info", build) == 1
    assert v("smtp_tls_exporter_config_last_reload_successful") == 0
    assert v("smtp_tls_exporter_config_last_reload_success_timestamp_seconds") == NOW - 100
    assert v("smtp_tls_exporter_probes_total", {"result": "success"}) == 1
    assert v("smtp_tls_exporter_probes_total", {"result": "failure"}) == 4
    assert v("smtp_tls_exporter_targets") == 3
    assert v("smtp_tls_exporter_scheduler_lag_seconds") == 0.25
    assert v("smtp_tls_exporter_scheduler_lag_max_seconds") == 1.5


def test_fresh_exporter_counts_from_zero() -> None:
    reg = registry_for(ServiceState())
    assert reg.get_sample_value("smtp_tls_exporter_probes_total", {"result": "success"}) == 0
    assert reg.get_sample_value("smtp_tls_exporter_probes_total", {"result": "failure"}) == 0
    assert reg.get_sample_value("smtp_tls_exporter_targets") == 0
    # Never loaded successfully: no timestamp rather than a made-up one.
    names = {n for n, _, _ in samples(reg)}
    assert "smtp_tls_exporter_config_last_reload_success_timestamp_seconds" not in names
    assert not any(n.startswith("smtp_tls_probe") for n in names)


def test_registering_does_not_collect() -> None:
    calls: list[int] = []

    def snapshot() -> Snapshot:
        calls.append(1)
        return ServiceState().snapshot()

    registry = CollectorRegistry()
    registry.register(SmtpTlsCollector(snapshot))
    assert calls == []
    generate_latest(registry)
    assert calls == [1]  # one snapshot per scrape


def test_no_sample_timestamps() -> None:
    reg = registry_for(make_state(starttls_ok(), refused(), implicit_expired()))
    assert all(s.timestamp is None for m in reg.collect() for s in m.samples)
    text = generate_latest(reg).decode()
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.fullmatch(r"\S+(\{.*\})? \S+", line), line  # name{labels} value, no time


def test_text_and_openmetrics_name_the_same_series() -> None:
    reg = registry_for(make_state(starttls_ok(), refused(), implicit_expired()))
    text = {
        (s.name, tuple(sorted(s.labels.items())))
        for fam in text_string_to_metric_families(generate_latest(reg).decode())
        for s in fam.samples
    }
    om_lines = generate_openmetrics(reg).decode().splitlines()  # type: ignore[no-untyped-call]
    assert om_lines[-1] == "# EOF"
    om_names = {line.split("{")[0].split(" ")[0] for line in om_lines if not line.startswith("#")}
    assert om_names == {name for name, _ in text}
    assert "smtp_tls_cert_info" in om_names and "smtp_tls_exporter_probes_total" in om_names


GOLDEN = """\
# HELP smtp_tls_probe_success 1 if the probe succeeded, 0 if it failed (from the last scheduled probe).
# TYPE smtp_tls_probe_success gauge
smtp_tls_probe_success{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.0
# HELP smtp_tls_probe_duration_seconds Seconds spent in each phase of the probe (from the last scheduled probe).
# TYPE smtp_tls_probe_duration_seconds gauge
smtp_tls_probe_duration_seconds{host="127.0.0.1",mode="implicit_tls",phase="connect",port="465",target="submissions"} 0.0003
smtp_tls_probe_duration_seconds{host="127.0.0.1",mode="implicit_tls",phase="greeting",port="465",target="submissions"} 0.0012
smtp_tls_probe_duration_seconds{host="127.0.0.1",mode="implicit_tls",phase="ehlo",port="465",target="submissions"} 0.0009
smtp_tls_probe_duration_seconds{host="127.0.0.1",mode="implicit_tls",phase="tls_handshake",port="465",target="submissions"} 0.0101
smtp_tls_probe_duration_seconds{host="127.0.0.1",mode="implicit_tls",phase="total",port="465",target="submissions"} 0.0131
# HELP smtp_tls_last_probe_timestamp_seconds Unix time at which the last scheduled probe started.
# TYPE smtp_tls_last_probe_timestamp_seconds gauge
smtp_tls_last_probe_timestamp_seconds{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.759999997e+09
# HELP smtp_tls_probe_interval_seconds Seconds between scheduled probes of the target, from the config (an MX host: its domain's mx_interval, or interval if shorter); present from the moment the target is configured.
# TYPE smtp_tls_probe_interval_seconds gauge
smtp_tls_probe_interval_seconds{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 60.0
# HELP smtp_tls_version_info The negotiated TLS version, as the version label (from the last scheduled probe).
# TYPE smtp_tls_version_info gauge
smtp_tls_version_info{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions",version="TLS 1.3"} 1.0
# HELP smtp_tls_cipher_info The negotiated cipher suite, as the cipher label (from the last scheduled probe).
# TYPE smtp_tls_cipher_info gauge
smtp_tls_cipher_info{cipher="TLS_AES_256_GCM_SHA384",host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.0
# HELP smtp_tls_cert_not_after_timestamp_seconds Unix time at which the leaf certificate expires (from the last scheduled probe).
# TYPE smtp_tls_cert_not_after_timestamp_seconds gauge
smtp_tls_cert_not_after_timestamp_seconds{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.765184e+09
# HELP smtp_tls_cert_not_before_timestamp_seconds Unix time from which the leaf certificate is valid (from the last scheduled probe).
# TYPE smtp_tls_cert_not_before_timestamp_seconds gauge
smtp_tls_cert_not_before_timestamp_seconds{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.757408e+09
# HELP smtp_tls_cert_expiry_days Days until the leaf certificate expires, negative once expired; computed at scrape time from the certificate seen by the last scheduled probe.
# TYPE smtp_tls_cert_expiry_days gauge
smtp_tls_cert_expiry_days{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 60.0
# HELP smtp_tls_chain_earliest_not_after_timestamp_seconds Unix time at which the first certificate of the served chain expires (from the last scheduled probe).
# TYPE smtp_tls_chain_earliest_not_after_timestamp_seconds gauge
smtp_tls_chain_earliest_not_after_timestamp_seconds{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.765184e+09
# HELP smtp_tls_cert_trusted 1 if the served chain verifies against the trust store, 0 if not (from the last scheduled probe).
# TYPE smtp_tls_cert_trusted gauge
smtp_tls_cert_trusted{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.0
# HELP smtp_tls_cert_hostname_match 1 if the leaf certificate is valid for the target's server name, 0 if not (from the last scheduled probe).
# TYPE smtp_tls_cert_hostname_match gauge
smtp_tls_cert_hostname_match{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.0
# HELP smtp_tls_cert_verify_info Outcome of certificate verification: ok or the first problem found (from the last scheduled probe).
# TYPE smtp_tls_cert_verify_info gauge
smtp_tls_cert_verify_info{host="127.0.0.1",mode="implicit_tls",port="465",reason="ok",target="submissions"} 1.0
# HELP smtp_tls_cert_info Identity of the leaf certificate (from the last scheduled probe).
# TYPE smtp_tls_cert_info gauge
smtp_tls_cert_info{fingerprint_sha256="3f5d0c9a27e4b1c8d6f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2",host="127.0.0.1",issuer="CN=Example Issuing CA,O=Example",key_bits="256",key_type="EC",mode="implicit_tls",port="465",serial="4F2A9C0B1D7E",signature_algorithm="ecdsa-with-SHA256",subject="CN=mail.example.test,O=Example Mail",target="submissions"} 1.0
# HELP smtp_tls_cert_verify_required 1 if the target's config requires a verified certificate (verify: required, a certificate problem fails the probe), 0 if problems are only reported (verify: report); present from the moment the target is configured.
# TYPE smtp_tls_cert_verify_required gauge
smtp_tls_cert_verify_required{host="127.0.0.1",mode="implicit_tls",port="465",target="submissions"} 1.0
"""  # noqa: E501


def test_golden_exposition_of_one_implicit_tls_result() -> None:
    text = generate_latest(registry_for(make_state(implicit_ok()))).decode()
    endpoint_part = text[text.index("# HELP smtp_tls_probe_success") :]
    assert endpoint_part == GOLDEN
    exporter_part = text[: text.index("# HELP smtp_tls_probe_success")]
    assert 'smtp_tls_exporter_probes_total{result="success"} 1.0\n' in exporter_part
    assert "smtp_tls_exporter_targets 1.0\n" in exporter_part


# --- docs/metrics.md and the collector agree -------------------------------------------------


def rich_state() -> ServiceState:
    """Every kind of result the collector knows, so every metric it can emit is emitted."""
    state = make_state(starttls_ok(), refused(), implicit_expired(), implicit_ok(_IMPLICIT_OK))
    add_domains(state, (ENFORCED, enforced()), (BROKEN, broken()))
    state.reload_success_timestamp = NOW - 60
    add_checks(state)
    add_dane(state)
    return state


def rich_registry() -> CollectorRegistry:
    """The collector over rich_state(), and the exporter's reliability metrics."""
    registry = registry_for(rich_state())
    registry.register(rich_service_collector())
    registry.register(ShardCollector(Shard(1, 3), lambda: parse_config("targets: [a:25, b:25]")))
    return registry


def add_dane(state: ServiceState) -> None:
    """A target with a DANE check."""
    target = dataclasses.replace(RELAY, name="dane", dane=True)
    state.set_targets((*state.targets, target))
    state.record(dane_results.checked(starttls_ok(target)), lag=0.0)


def add_checks(state: ServiceState) -> None:
    """An all_addresses target, and check runs with and without a verdict."""
    good = check_results.at(starttls_ok(check_results.POOL), check_results.V4, "ipv4")
    bad = check_results.refused(check_results.POOL, check_results.V6, "ipv6")
    pool = check_results.pooled(check_results.POOL, (good, bad))
    state.set_targets((*state.targets, pool.target))
    state.record(pool, lag=0.0)
    runs = (check_results.injection(False), check_results.protocols(True, True, True))
    state.record_checks(pool.target, check_results.V4, runs)
    state.record_checks(SUBMISSION, None, (check_results.submission(True),))
    failed = check_results.failed(CheckName.PROTOCOLS)
    state.record_checks(pool.target, check_results.V6, (failed,))


_IMPLICIT_OK = Target.create("localhost", 465)


def rich_service_collector() -> ServiceCollector:
    """The exporter's reliability metrics, each present: an endpoint backing off, a web config."""
    manners = Manners()
    pushed = ProbeResult(
        target=_IMPLICIT_OK,
        started_at=NOW,
        success=False,
        failure=Failure(Stage.GREETING, Reason.GREETING_REJECTED, "421 busy"),
    )
    manners.started(_IMPLICIT_OK)
    manners.finished(_IMPLICIT_OK, pushed)
    collector = ServiceCollector(manners, lambda: 12)
    collector.web = WebGuard(WebConfig())
    return collector


def documented() -> dict[str, dict[str, object]]:
    """metric name -> its documented type and example lines, from docs/metrics.md."""
    text = DOCS.read_text(encoding="utf-8")
    docs: dict[str, dict[str, object]] = {}
    for section in re.split(r"(?m)^### ", text)[1:]:
        heading, _, body = section.partition("\n")
        name = heading.strip().strip("`")
        kind = re.search(r"(?m)^Type: (\w+)\.", body)
        examples = re.findall(r"(?m)^(smtp_tls_\w+(?:\{.*\})? \S+)$", body)
        docs[name] = {"type": kind.group(1) if kind else None, "examples": examples}
    return docs


def emitted(registry: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    """sample name -> (family type, label names without static labels)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for family in registry.collect():
        for s in family.samples:
            names = set(s.labels) - {"site"}
            if "target" in names:  # an MX probe's endpoint series: labelled as in "Labels"
                names -= {"domain", "mx_preference"}
                names -= {"address", "ip_family"}  # a target's with all_addresses, likewise
            out.setdefault(s.name, (family.type, set()))[1].update(names)
    return out


def test_docs_list_exactly_the_emitted_metrics() -> None:
    docs, got = documented(), emitted(rich_registry())
    assert sorted(set(got) - set(docs)) == [], "emitted but not in docs/metrics.md"
    assert sorted(set(docs) - set(got)) == [], "in docs/metrics.md but never emitted"


def test_docs_types_and_examples_match_the_exposition() -> None:
    docs, got = documented(), emitted(rich_registry())
    for name, doc in docs.items():
        kind, label_names = got[name]
        assert doc["type"] == kind, name
        examples = doc["examples"]
        assert isinstance(examples, list) and examples, f"{name}: no example line"
        for line in examples:
            (family,) = text_string_to_metric_families(line + "\n")
            (sample,) = family.samples
            assert sample.name == name, line
            assert set(sample.labels) == label_names, f"{name}: example labels differ"


def test_on_demand_answer_has_endpoint_families_only_and_says_so() -> None:
    state = make_state(starttls_ok())
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SmtpTlsCollector(state.snapshot, on_demand=True))
    names = {m.name for m in registry.collect()}
    assert "smtp_tls_probe_success" in names
    # the verify policy is the target's; an interval it has not: nothing schedules this probe
    assert "smtp_tls_cert_verify_required" in names
    assert "smtp_tls_probe_interval_seconds" not in names
    assert not any(n.startswith("smtp_tls_exporter_") for n in names)
    texts = [m.documentation for m in registry.collect()]
    assert all("scheduled" not in t for t in texts)
    assert any("this on-demand probe" in t for t in texts)


# --- mail domains ----------------------------------------------------------------------------

ENFORCED = DomainConfig("example.test", labels=(("site", "fra1"),))
BROKEN = DomainConfig("broken.example.test")
MX1 = MxHost("mail.example.test", 10)
MX2 = MxHost("backup.example.net", 20)
STATES = ("enforce", "testing", "none", "absent", "invalid")


def mx_target(domain: DomainConfig, host: MxHost) -> Target:
    """As DomainChecker.mx_target builds it: port 25, report, domain and preference labels."""
    labels = {**dict(domain.labels), "domain": domain.name, "mx_preference": str(host.preference)}
    return Target.create(
        host.name, 25, server_name=host.name, verify=VerifyPolicy.REPORT, labels=labels
    )


def enforced(*, started_at: float = NOW - 30) -> DomainResult:
    """Enforce policy naming MX1 only; MX1 compliant, MX2 (not in the policy) has a bad cert."""
    bad_cert = Verification(False, False, VerifyReason.SELF_SIGNED, "self-signed")
    return DomainResult(
        domain=ENFORCED.name,
        started_at=started_at,
        duration=0.4,
        mx=MxSet(MxStatus.MX, (MX1, MX2)),
        sts=StsResult(
            StsState.ENFORCE,
            True,
            record=StsRecord("20251009T1", "v=STSv1; id=20251009T1"),
            policy=Policy(StsMode.ENFORCE, 604800, ("mail.example.test",)),
        ),
        tlsrpt=TlsRptResult(True, TlsRptRecord(("mailto:tlsrpt@example.test",), "v=TLSRPTv1; ..")),
        mx_checks=(
            MxCheck(MX1, True, starttls_ok(mx_target(ENFORCED, MX1)), True),
            MxCheck(
                MX2,
                False,
                dataclasses.replace(starttls_ok(mx_target(ENFORCED, MX2)), verification=bad_cert),
                False,
            ),
        ),
        labels=ENFORCED.labels,
    )


def broken() -> DomainResult:
    """A record whose policy is missing (404), a null MX, an invalid TLS-RPT record."""
    return DomainResult(
        domain=BROKEN.name,
        started_at=NOW - 50,
        duration=0.1,
        mx=MxSet(MxStatus.NULL, detail="null MX"),
        sts=StsResult(
            StsState.INVALID,
            True,
            record=StsRecord("b1", "v=STSv1; id=b1"),
            failure=CheckFailure(CheckReason.HTTP_STATUS, "HTTP 404 Not Found"),
        ),
        tlsrpt=TlsRptResult(True, failure=CheckFailure(CheckReason.BAD_RECORD, "no rua")),
    )


def add_domains(state: ServiceState, *pairs: tuple[DomainConfig, DomainResult | None]) -> None:
    state.set_domains(tuple(d for d, _ in pairs))
    for domain, result in pairs:
        if result is not None:
            state.record_domain(domain, result)


def domain_state(*pairs: tuple[DomainConfig, DomainResult | None]) -> ServiceState:
    state = ServiceState()
    add_domains(state, *pairs)
    return state


def names_for_domain(registry: CollectorRegistry, name: str) -> set[str]:
    return {n for n, lab, _ in samples(registry) if lab.get("domain") == name}


def test_domain_with_an_enforce_policy() -> None:
    reg = registry_for(domain_state((ENFORCED, enforced())))
    v = reg.get_sample_value
    lab = {"site": "fra1", "domain": "example.test"}
    assert {s: v("smtp_tls_mta_sts_mode", {**lab, "mode": s}) for s in STATES} == {
        "enforce": 1,
        "testing": 0,
        "none": 0,
        "absent": 0,
        "invalid": 0,
    }
    assert v("smtp_tls_mta_sts_record_present", lab) == 1
    assert v("smtp_tls_mta_sts_policy_valid", lab) == 1
    assert v("smtp_tls_mta_sts_max_age_seconds", lab) == 604800
    assert v("smtp_tls_mta_sts_policy_id_info", {**lab, "id": "20251009T1"}) == 1
    assert v("smtp_tls_mta_sts_mx_match", {**lab, "mx": "mail.example.test"}) == 1
    assert v("smtp_tls_mta_sts_mx_match", {**lab, "mx": "backup.example.net"}) == 0
    assert v("smtp_tls_mta_sts_mx_compliant", {**lab, "mx": "mail.example.test"}) == 1
    assert v("smtp_tls_mta_sts_mx_compliant", {**lab, "mx": "backup.example.net"}) == 0
    assert v("smtp_tls_tlsrpt_record_present", lab) == 1
    assert v("smtp_tls_tlsrpt_record_valid", lab) == 1
    assert v("smtp_tls_mx_count", lab) == 2
    assert v("smtp_tls_domain_last_check_timestamp_seconds", lab) == NOW - 30
    assert "smtp_tls_mta_sts_policy_fetch_failure_info" not in names_for_domain(reg, ENFORCED.name)
    assert v("smtp_tls_exporter_domains") == 1
    assert v("smtp_tls_exporter_targets") == 0


def test_mx_probes_are_endpoint_series_with_domain_and_preference() -> None:
    reg = registry_for(domain_state((ENFORCED, enforced())))
    v = reg.get_sample_value
    for host, verify in ((MX1, "ok"), (MX2, "self_signed")):
        lab = labels(mx_target(ENFORCED, host))
        assert lab["domain"] == "example.test"
        assert lab["mx_preference"] == str(host.preference)
        assert lab["target"] == f"{host.name}:25" and lab["mode"] == "starttls"
        assert v("smtp_tls_probe_success", lab) == 1
        assert v("smtp_tls_cert_verify_info", {**lab, "reason": verify}) == 1
        assert v("smtp_tls_cert_expiry_days", lab) == pytest.approx(60.0)


def test_domain_whose_policy_fetch_fails() -> None:
    reg = registry_for(domain_state((BROKEN, broken())))
    v = reg.get_sample_value
    lab = {"domain": "broken.example.test"}
    assert v("smtp_tls_mta_sts_mode", {**lab, "mode": "invalid"}) == 1
    assert v("smtp_tls_mta_sts_mode", {**lab, "mode": "enforce"}) == 0
    assert v("smtp_tls_mta_sts_record_present", lab) == 1
    assert v("smtp_tls_mta_sts_policy_valid", lab) == 0
    assert v("smtp_tls_mta_sts_policy_fetch_failure_info", {**lab, "reason": "http_status"}) == 1
    # The record is valid, its policy is not: an id, no max_age.
    assert v("smtp_tls_mta_sts_policy_id_info", {**lab, "id": "b1"}) == 1
    assert v("smtp_tls_tlsrpt_record_present", lab) == 1
    assert v("smtp_tls_tlsrpt_record_valid", lab) == 0
    assert v("smtp_tls_mx_count", lab) == 0  # null MX
    assert names_for_domain(reg, BROKEN.name).isdisjoint(
        {
            "smtp_tls_mta_sts_max_age_seconds",
            "smtp_tls_mta_sts_mx_match",
            "smtp_tls_mta_sts_mx_compliant",
            "smtp_tls_probe_success",
        }
    )
    failing = [lab for n, lab, _ in samples(reg) if n.endswith("fetch_failure_info")]
    assert len(failing) == 1


def test_domain_without_mta_sts_whose_mx_lookup_failed() -> None:
    result = DomainResult(
        domain=BROKEN.name,
        started_at=NOW,
        duration=5.0,
        mx=MxSet(MxStatus.ERROR, detail="SERVFAIL"),
        sts=StsResult(StsState.ABSENT, False, failure=CheckFailure(CheckReason.NO_RECORD)),
        tlsrpt=TlsRptResult(False, failure=CheckFailure(CheckReason.NO_RECORD)),
    )
    reg = registry_for(domain_state((BROKEN, result)))
    v = reg.get_sample_value
    lab = {"domain": BROKEN.name}
    assert v("smtp_tls_mta_sts_mode", {**lab, "mode": "absent"}) == 1
    assert v("smtp_tls_mta_sts_record_present", lab) == 0
    assert v("smtp_tls_mta_sts_policy_fetch_failure_info", {**lab, "reason": "no_record"}) == 1
    assert v("smtp_tls_tlsrpt_record_present", lab) == 0
    # Unknown, not zero: the lookup failed.
    assert v("smtp_tls_mx_count", lab) is None
    assert "smtp_tls_mta_sts_policy_id_info" not in names_for_domain(reg, BROKEN.name)


def test_match_and_compliance_only_where_known() -> None:
    # A testing policy without matching data for one MX, and an MX not probed (probe_mx: false).
    r = enforced()
    unprobed = dataclasses.replace(
        r, mx_checks=(MxCheck(MX1, None, None, None), MxCheck(MX2, True, None, None))
    )
    reg = registry_for(domain_state((ENFORCED, unprobed)))
    lab = {"site": "fra1", "domain": ENFORCED.name}
    assert reg.get_sample_value("smtp_tls_mta_sts_mx_match", {**lab, "mx": MX2.name}) == 1
    got = {(n, lab.get("mx")) for n, lab, _ in samples(reg) if n.startswith("smtp_tls_mta_sts_mx")}
    assert got == {("smtp_tls_mta_sts_mx_match", MX2.name)}
    assert "smtp_tls_probe_success" not in names_for_domain(reg, ENFORCED.name)


DOMAIN_CONFIG_SERIES = {"smtp_tls_domain_check_interval_seconds"}


def test_unchecked_domain_has_only_its_interval_and_is_counted() -> None:
    slow = dataclasses.replace(BROKEN, interval=6 * 3600.0)
    reg = registry_for(domain_state((ENFORCED, enforced()), (slow, None)))
    assert names_for_domain(reg, BROKEN.name) == DOMAIN_CONFIG_SERIES
    v = reg.get_sample_value
    assert v("smtp_tls_domain_check_interval_seconds", {"domain": BROKEN.name}) == 6 * 3600
    lab = {"site": "fra1", "domain": ENFORCED.name}
    assert v("smtp_tls_domain_check_interval_seconds", lab) == 3600
    assert reg.get_sample_value("smtp_tls_exporter_domains") == 2


@pytest.mark.parametrize(
    ("interval", "mx_interval", "expected"),
    [(3600.0, 300.0, 300.0), (600.0, 3600.0, 600.0)],
)
def test_mx_hosts_are_probed_every_mx_interval_or_interval_if_shorter(
    interval: float, mx_interval: float, expected: float
) -> None:
    domain = dataclasses.replace(ENFORCED, interval=interval, mx_interval=mx_interval)
    reg = registry_for(domain_state((domain, enforced())))
    for host in (MX1, MX2):
        lab = labels(mx_target(ENFORCED, host))
        assert reg.get_sample_value("smtp_tls_probe_interval_seconds", lab) == expected
        # MX hosts are probed with verify: report; their verdict is mx_compliant
        assert reg.get_sample_value("smtp_tls_cert_verify_required", lab) == 0


@pytest.mark.parametrize("status", list(MxStatus))
def test_mx_lookup_status_tells_null_none_and_error_apart(status: MxStatus) -> None:
    hosts = (MX1,) if status in (MxStatus.MX, MxStatus.IMPLICIT) else ()
    result = dataclasses.replace(broken(), mx=MxSet(status, hosts))
    reg = registry_for(domain_state((BROKEN, result)))
    got = [(lab["status"], v) for n, lab, v in samples(reg) if n == "smtp_tls_mx_lookup_info"]
    assert got == [(str(status), 1)]


def test_removed_or_changed_domain_vanishes() -> None:
    state = domain_state((ENFORCED, enforced()), (BROKEN, broken()))
    reg = registry_for(state)
    state.set_domains((ENFORCED,))
    assert names_for_domain(reg, BROKEN.name) == set()
    assert names_for_domain(reg, ENFORCED.name)
    # Same name, another definition: nothing until it is checked again.
    changed = dataclasses.replace(ENFORCED, probe_mx=False)
    state.set_domains((changed,))
    assert names_for_domain(reg, ENFORCED.name) == DOMAIN_CONFIG_SERIES
    # A result of the old definition, arriving late, is not kept.
    state.record_domain(ENFORCED, enforced())
    assert names_for_domain(reg, ENFORCED.name) == DOMAIN_CONFIG_SERIES
    state.record_domain(changed, enforced())
    assert reg.get_sample_value("smtp_tls_mx_count", {"site": "fra1", "domain": "example.test"})


def test_an_mx_host_that_leaves_the_mx_set_loses_its_series() -> None:
    state = domain_state((ENFORCED, enforced()))
    reg = registry_for(state)

    def backup_series() -> list[str]:
        return [
            n
            for n, lab, _ in samples(reg)
            if lab.get("mx") == MX2.name or lab.get("target") == f"{MX2.name}:25"
        ]

    assert backup_series()
    r = enforced(started_at=NOW)
    state.record_domain(
        ENFORCED, dataclasses.replace(r, mx=MxSet(MxStatus.MX, (MX1,)), mx_checks=r.mx_checks[:1])
    )
    assert backup_series() == []
    assert reg.get_sample_value("smtp_tls_mx_count", {"site": "fra1", "domain": ENFORCED.name}) == 1


def test_domain_families_have_no_timestamps_and_parse_as_openmetrics() -> None:
    reg = registry_for(domain_state((ENFORCED, enforced()), (BROKEN, broken())))
    assert all(s.timestamp is None for m in reg.collect() for s in m.samples)
    om = generate_openmetrics(reg).decode()  # type: ignore[no-untyped-call]
    assert 'smtp_tls_mta_sts_mode{domain="example.test",mode="enforce",site="fra1"} 1.0' in om
