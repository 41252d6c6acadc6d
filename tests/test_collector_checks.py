"""The collector for all_addresses targets and the opt-in checks: hand-built results in, samples
out. (docs/metrics.md against these series: tests/test_collector.py's rich registry has them.)"""

from __future__ import annotations

import dataclasses

from exporter.config import RESERVED_LABELS
from exporter.model import Checks, Failure, Phases, ProbeResult, Reason, Stage, Target
from exporter.service.state import ServiceState
from tests.check_results import (
    GONE,
    NOW,
    POOL,
    V4,
    V6,
    at,
    injection,
    pooled,
    protocols,
    refused,
    submission,
)
from tests.test_collector import (
    SUBMISSION,
    labels,
    make_state,
    registry_for,
    samples,
    starttls_ok,
)
from tests.test_collector import (
    refused as refused_587,
)

V4_LABELS = labels(POOL, address=V4, ip_family="ipv4")
V6_LABELS = labels(POOL, address=V6, ip_family="ipv6")


def pool_result(*extra: tuple[str, str]) -> ProbeResult:
    good = at(starttls_ok(POOL), V4, "ipv4")
    bad = tuple(refused(POOL, address, family) for address, family in extra)
    return pooled(POOL, (good, *bad))


def series(state: ServiceState, target: Target) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (n, tuple(sorted(lab.items())))
        for n, lab, _ in samples(registry_for(state))
        if lab.get("target") == target.name
    }


def test_each_address_has_its_own_series() -> None:
    reg = registry_for(make_state(pool_result((V6, "ipv6"))))
    v = reg.get_sample_value
    assert v("smtp_tls_probe_success", V4_LABELS) == 1
    assert v("smtp_tls_probe_success", V6_LABELS) == 0
    assert (
        v(
            "smtp_tls_probe_failure_info",
            {**V6_LABELS, "stage": "connect", "reason": "connection_refused"},
        )
        == 1
    )
    assert (
        v(
            "smtp_tls_probe_failure_info",
            {**V4_LABELS, "stage": "connect", "reason": "connection_refused"},
        )
        is None
    )
    assert v("smtp_tls_cert_expiry_days", V4_LABELS) is not None
    assert v("smtp_tls_cert_expiry_days", V6_LABELS) is None
    assert v("smtp_tls_probe_duration_seconds", {**V6_LABELS, "phase": "resolve"}) == 0.001
    # the config's series too, so that rules match them label for label
    assert v("smtp_tls_probe_interval_seconds", V6_LABELS) == POOL.interval
    assert v("smtp_tls_cert_verify_required", V4_LABELS) == 0
    # no series of the target without an address: each belongs to one address
    for name, lab, _ in samples(reg):
        if lab.get("target") == POOL.name:
            assert lab["address"] in (V4, V6) and lab["ip_family"] in ("ipv4", "ipv6"), name


def test_a_lookup_failure_is_one_set_of_series_without_address() -> None:
    failed = ProbeResult(
        target=POOL,
        started_at=NOW - 5,
        success=False,
        failure=Failure(Stage.RESOLVE, Reason.NAME_NOT_RESOLVED, "NXDOMAIN"),
        phases=Phases(resolve=0.002, total=0.002),
    )
    state = make_state(failed)
    state.record_checks(POOL, V4, (injection(False),))
    reg = registry_for(state)
    assert reg.get_sample_value("smtp_tls_probe_success", labels(POOL)) == 0
    assert {n for n, _ in series(state, POOL)} == {
        "smtp_tls_probe_success",
        "smtp_tls_probe_failure_info",
        "smtp_tls_probe_duration_seconds",
        "smtp_tls_last_probe_timestamp_seconds",
        "smtp_tls_probe_interval_seconds",
        "smtp_tls_cert_verify_required",
    }


def test_an_address_that_leaves_dns_loses_its_series_checks_included() -> None:
    state = make_state(pool_result((GONE, "ipv4")))
    state.record_checks(POOL, V4, (injection(False), protocols(True, True, True)))
    state.record_checks(POOL, GONE, (injection(True),))
    reg = registry_for(state)
    gone = labels(POOL, address=GONE, ip_family="ipv4")
    assert reg.get_sample_value("smtp_tls_probe_success", gone) == 0
    assert reg.get_sample_value("smtp_tls_starttls_injection_vulnerable", gone) == 1
    state.record(pool_result(), lag=0.0)  # the next lookup: GONE is no longer in DNS
    addresses = {lab.get("address") for _, lab, _ in samples(reg) if lab.get("target") == POOL.name}
    assert addresses == {V4}
    assert reg.get_sample_value("smtp_tls_starttls_injection_vulnerable", V4_LABELS) == 0


def test_check_series_of_an_address() -> None:
    state = make_state(pool_result())
    state.record_checks(POOL, V4, (injection(False), protocols(True, False, True)))
    reg = registry_for(state)
    v = reg.get_sample_value
    assert v("smtp_tls_starttls_injection_vulnerable", V4_LABELS) == 0
    assert {
        version: v("smtp_tls_protocol_accepted", {**V4_LABELS, "version": version})
        for version in ("TLS 1.0", "TLS 1.1", "TLS 1.2")
    } == {"TLS 1.0": 1, "TLS 1.1": 0, "TLS 1.2": 1}
    for check in ("starttls_injection", "protocols"):
        when = v("smtp_tls_check_last_run_timestamp_seconds", {**V4_LABELS, "check": check})
        assert when == NOW - 3600
    names = {n for n, _ in series(state, POOL)}
    assert "smtp_tls_check_failure_info" not in names
    assert "smtp_tls_submission_requires_tls" not in names  # not enabled, never run


def test_a_check_without_verdict_has_a_failure_and_no_value() -> None:
    state = make_state(refused_587())
    state.record_checks(SUBMISSION, None, (submission(None),))
    reg = registry_for(state)
    lab = labels(SUBMISSION)
    assert reg.get_sample_value("smtp_tls_submission_requires_tls", lab) is None
    failure = {**lab, "check": "submission_requires_tls", "stage": "mail_from", "reason": "timeout"}
    assert reg.get_sample_value("smtp_tls_check_failure_info", failure) == 1
    state.record_checks(SUBMISSION, None, (submission(True),))  # the next run has one
    assert reg.get_sample_value("smtp_tls_submission_requires_tls", lab) == 1
    assert reg.get_sample_value("smtp_tls_check_failure_info", failure) is None


def test_check_results_stay_between_runs_whatever_the_probe_says() -> None:
    state = make_state(starttls_ok(SUBMISSION))
    state.record_checks(SUBMISSION, None, (submission(False),))
    reg = registry_for(state)
    assert reg.get_sample_value("smtp_tls_submission_requires_tls", labels(SUBMISSION)) == 0
    state.record(refused_587(), lag=0.0)  # the probes go on, failing now; the checks wait
    assert reg.get_sample_value("smtp_tls_submission_requires_tls", labels(SUBMISSION)) == 0
    assert reg.get_sample_value("smtp_tls_probe_success", labels(SUBMISSION)) == 0


def test_checks_of_an_earlier_definition_are_not_shown() -> None:
    changed = dataclasses.replace(SUBMISSION, checks=Checks(submission_requires_tls=True))
    state = make_state(starttls_ok(changed))
    state.record_checks(SUBMISSION, None, (submission(True),))  # of the old definition
    reg = registry_for(state)
    assert reg.get_sample_value("smtp_tls_submission_requires_tls", labels(changed)) is None


def test_address_ip_family_and_check_labels_are_reserved() -> None:
    state = make_state(pool_result((V6, "ipv6")), refused_587())
    state.record_checks(POOL, V4, (injection(False), protocols(True, True, True)))
    state.record_checks(SUBMISSION, None, (submission(None),))
    used = {k for _, lab, _ in samples(registry_for(state)) for k in lab}
    assert {"address", "ip_family", "check"} <= used <= RESERVED_LABELS
