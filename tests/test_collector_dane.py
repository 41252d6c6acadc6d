"""The collector's DANE series: hand-built DANE results in, samples out. (docs/metrics.md against
these series: tests/test_collector.py's rich registry has them.)"""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from exporter.dane.model import DaneReason
from exporter.domains.model import MxCheck
from exporter.service.collector import SmtpTlsCollector
from exporter.service.dane_metrics import DANE_HELP
from exporter.service.state import ServiceState
from tests import check_results
from tests.dane_results import checked, dane, unusable
from tests.test_collector import (
    ENFORCED,
    MX1,
    RELAY,
    enforced,
    labels,
    make_state,
    mx_target,
    names_for,
    registry_for,
    samples,
    starttls_ok,
)

GAUGES = ("smtp_tls_dane_tlsa_present", "smtp_tls_dane_dnssec_secure", "smtp_tls_dane_match")
COUNTS = ("smtp_tls_dane_tlsa_records", "smtp_tls_dane_tlsa_unusable_records")


def dane_series(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, lab, value in samples(registry):
        if name.startswith("smtp_tls_dane_"):
            found.setdefault(name, []).append((lab, value))
    return found


# (reason, (tlsa_present, dnssec_secure, match), counted records or None)
VERDICTS = [
    (DaneReason.OK, (1, 1, 1), (2, 0)),
    (DaneReason.NO_TLSA, (0, 1, 0), (0, 0)),
    (DaneReason.INSECURE, (1, 0, 0), (2, 0)),
    (DaneReason.BOGUS, (0, 0, 0), None),
    (DaneReason.SERVFAIL, (0, 0, 0), None),
    (DaneReason.DNS_ERROR, (0, 0, 0), None),
    (DaneReason.TIMEOUT, (0, 0, 0), None),
    (DaneReason.NO_CERTIFICATE, (1, 1, 0), (2, 0)),
    (DaneReason.MISMATCH, (1, 1, 0), (2, 0)),
    (DaneReason.TA_UNVERIFIED, (1, 1, 0), (2, 0)),
    (DaneReason.EXPIRED, (1, 1, 0), (2, 0)),
    (DaneReason.NAME_MISMATCH, (1, 1, 0), (2, 0)),
    (DaneReason.INTERNAL_ERROR, (0, 0, 0), None),
]


def test_every_reason_is_in_the_table() -> None:
    assert {r for r, _, _ in VERDICTS} | {DaneReason.NO_USABLE_RECORDS} == set(DaneReason)


@pytest.mark.parametrize(
    ("reason", "facts", "counts"), VERDICTS, ids=[str(r) for r, *_ in VERDICTS]
)
def test_each_verdict(
    reason: DaneReason, facts: tuple[int, int, int], counts: tuple[int, int] | None
) -> None:
    reg = registry_for(make_state(checked(starttls_ok(), reason)))
    lab = labels(RELAY)
    v = reg.get_sample_value
    assert tuple(v(name, lab) for name in GAUGES) == facts
    assert v("smtp_tls_dane_check_info", {**lab, "reason": str(reason)}) == 1
    info = dane_series(reg)["smtp_tls_dane_check_info"]
    assert len(info) == 1, "one reason at a time"
    got = tuple(v(name, lab) for name in COUNTS)
    assert got == (counts if counts is not None else (None, None))


def test_unusable_and_unreadable_records_are_counted() -> None:
    result = dataclasses.replace(starttls_ok(), dane=unusable())
    reg = registry_for(make_state(result))
    lab = labels(RELAY)
    v = reg.get_sample_value
    assert v("smtp_tls_dane_check_info", {**lab, "reason": "no_usable_records"}) == 1
    assert tuple(v(name, lab) for name in GAUGES) == (1, 1, 0)
    # one PKIX-EE record, one the resolver served and the exporter could not read
    assert (v("smtp_tls_dane_tlsa_records", lab), v(COUNTS[1], lab)) == (2, 2)


def test_no_dane_series_without_a_dane_check() -> None:
    reg = registry_for(make_state(starttls_ok()))
    assert not any(n.startswith("smtp_tls_dane_") for n in names_for(reg, RELAY))


def test_no_record_data_in_labels() -> None:
    reg = registry_for(make_state(checked(starttls_ok())))
    for name, lab, _ in samples(reg):
        if name.startswith("smtp_tls_dane_"):
            assert set(lab) <= {*labels(RELAY), "reason"}, name


def test_each_address_has_its_own_dane_series() -> None:
    pool = check_results.POOL
    good = check_results.at(checked(starttls_ok(pool)), check_results.V4, "ipv4")
    stale = dataclasses.replace(good, peer_address=check_results.V6, address_family="ipv6")
    stale = dataclasses.replace(stale, dane=dane(DaneReason.MISMATCH))
    reg = registry_for(make_state(check_results.pooled(pool, (good, stale))))
    v = reg.get_sample_value
    v4 = labels(pool, address=check_results.V4, ip_family="ipv4")
    v6 = labels(pool, address=check_results.V6, ip_family="ipv6")
    assert v("smtp_tls_dane_match", v4) == 1
    assert v("smtp_tls_dane_match", v6) == 0
    assert v("smtp_tls_dane_check_info", {**v6, "reason": "mismatch"}) == 1
    assert len(dane_series(reg)["smtp_tls_dane_match"]) == 2


def test_mx_hosts_have_dane_series_with_their_domain() -> None:
    state = ServiceState()
    state.set_domains((ENFORCED,))
    result = enforced()
    probe = checked(starttls_ok(mx_target(ENFORCED, MX1)), DaneReason.EXPIRED)
    first = result.mx_checks[0]
    result = dataclasses.replace(
        result,
        mx_checks=(MxCheck(first.host, first.policy_match, probe, True), *result.mx_checks[1:]),
    )
    state.record_domain(ENFORCED, result)
    reg = registry_for(state)
    lab = labels(mx_target(ENFORCED, MX1))
    assert lab["domain"] == ENFORCED.name and lab["mx_preference"] == "10"
    assert reg.get_sample_value("smtp_tls_dane_check_info", {**lab, "reason": "expired"}) == 1
    assert reg.get_sample_value("smtp_tls_dane_dnssec_secure", lab) == 1


def test_on_demand_help_says_so() -> None:
    state = make_state(checked(starttls_ok()))
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SmtpTlsCollector(state.snapshot, on_demand=True))
    texts = {m.name: m.documentation for m in registry.collect()}
    for name in DANE_HELP:
        assert "this on-demand probe" in texts[name], texts[name]
