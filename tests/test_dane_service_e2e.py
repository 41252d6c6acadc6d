"""DANE in the running exporter: a subprocess configured with `dane.nameservers` pointing at the
validating unbound of tests/fixtures/dnssec.py, targets and a mail domain whose MX hosts have
matching, mismatching, insecure, bogus, unusable and no TLSA records (the real Postfix behind
them), scraped over HTTP; /debug and the log say the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.dnssec import CHILD, LAME, MX_DOMAINS, ZONE, DnssecWorld
from tests.test_service_e2e import ExporterProcess, eventually, exporter_process, samples, value

pytestmark = pytest.mark.postfix

# target name -> (host, reason, (tlsa_present, dnssec_secure, match), (records, unusable) or None)
TARGETS = {
    "ok": (f"ee.{ZONE}", "ok", (1, 1, 1), (1, 0)),
    "ta": (f"mail.{ZONE}", "ok", (1, 1, 1), (1, 0)),  # DANE-TA on the intermediate
    "mismatch": (f"mismatch.{ZONE}", "mismatch", (1, 1, 0), (2, 0)),
    "expired": (f"expired-ta.{ZONE}", "expired", (1, 1, 0), (1, 0)),
    "insecure": (f"mx.{CHILD}", "insecure", (1, 0, 0), (1, 0)),
    "bogus": (f"bogus.{ZONE}", "bogus", (0, 0, 0), None),
    "unusable": (f"pkix.{ZONE}", "no_usable_records", (1, 1, 0), (2, 2)),
    "unreadable": (f"malformed.{ZONE}", "no_usable_records", (1, 1, 0), (1, 1)),
    "notlsa": (f"notlsa.{ZONE}", "no_tlsa", (0, 1, 0), (0, 0)),
    "nostarttls": (f"nostarttls.{ZONE}", "no_certificate", (1, 1, 0), (1, 0)),
    "lame": (f"mx.{LAME}", "servfail", (0, 0, 0), None),
}
GAUGES = ("smtp_tls_dane_tlsa_present", "smtp_tls_dane_dnssec_secure", "smtp_tls_dane_match")
COUNTS = ("smtp_tls_dane_tlsa_records", "smtp_tls_dane_tlsa_unusable_records")
DOMAIN = f"mixed.{ZONE}"
MX_REASONS = {
    f"ee.{ZONE}": "ok",
    f"mismatch.{ZONE}": "mismatch",
    f"mx.{CHILD}": "insecure",
    f"bogus.{ZONE}": "bogus",
}


def config(world: DnssecWorld) -> str:
    resolver = f'["{world.resolver.host}:{world.resolver.port}"]'
    lines = [
        "defaults: {interval: 1h, timeout: 5s, ehlo_name: exporter.test, "
        f"ca_file: {world.postfix.ca_file}}}",
        # the probes resolve the MX hosts through the same resolver
        f"dns: {{nameservers: {resolver}}}",
        f"dane: {{nameservers: {resolver}, timeout: 3s}}",
        "targets:",
    ]
    for name, (host, *_) in TARGETS.items():
        # mismatch is probed every second: its failure is logged once all the same
        interval = ", interval: 1s, timeout: 1s" if name == "mismatch" else ""
        lines.append(f"  - {{name: {name}, host: {host}, port: 25, dane: true{interval}}}")
    lines.append(f"  - {{name: plain, host: ee.{ZONE}, port: 25}}")  # no DANE asked for
    lines += ["domains:", f"  - {{name: {DOMAIN}, dane: true}}"]
    return "\n".join(lines) + "\n"


def checked(text: str) -> bool:
    targets = all(
        value(text, "smtp_tls_dane_check_info", target=name) is not None for name in TARGETS
    )
    mx = [
        lab
        for name, lab, _ in samples(text)
        if name == "smtp_tls_dane_check_info" and lab.get("domain") == DOMAIN
    ]
    return targets and len(mx) == len(MX_REASONS)


async def test_dane_series_of_targets_and_mx_hosts(
    tmp_path: Path, dnssec_world: DnssecWorld
) -> None:
    assert {h for _, h in MX_DOMAINS[DOMAIN]} == set(MX_REASONS)
    path = tmp_path / "config.yml"
    path.write_text(config(dnssec_world))
    with exporter_process(path) as exp:
        text = await eventually(exp.metrics, checked, "a DANE check of every target and MX host")
        for name, (host, reason, facts, counts) in TARGETS.items():
            got = tuple(value(text, g, target=name) for g in GAUGES)
            assert got == facts, (name, got)
            assert value(text, "smtp_tls_dane_check_info", target=name, reason=reason) == 1, name
            reasons = [
                lab["reason"]
                for n, lab, _ in samples(text)
                if n == "smtp_tls_dane_check_info" and lab["target"] == name
            ]
            assert reasons == [reason], name
            assert tuple(value(text, c, target=name) for c in COUNTS) == (counts or (None, None))
            assert value(text, "smtp_tls_dane_match", target=name, host=host, port="25") is not None
        assert not any(
            n.startswith("smtp_tls_dane_") and lab.get("target") == "plain"
            for n, lab, _ in samples(text)
        )
        # the probe itself is unaffected: it succeeded where DANE fails
        assert value(text, "smtp_tls_probe_success", target="mismatch") == 1
        assert value(text, "smtp_tls_probe_success", target="lame") == 0

        # a mail domain's MX hosts, labelled with the domain and their preference
        for host, reason in MX_REASONS.items():
            labels = {"domain": DOMAIN, "target": f"{host}:25"}
            assert value(text, "smtp_tls_dane_check_info", reason=reason, **labels) == 1, host
            preference = dict((h, str(p)) for p, h in MX_DOMAINS[DOMAIN])[host]
            assert value(text, "smtp_tls_dane_match", mx_preference=preference, **labels) == (
                1 if reason == "ok" else 0
            )

        await debug_pages(exp)
        await failures_logged_once(exp)


async def debug_pages(exp: ExporterProcess) -> None:
    status, report = await exp.get("/debug?target=mismatch")
    assert status == 200
    assert f"DANE (_25._tcp.mismatch.{ZONE})" in report
    assert "  verdict: mismatch (DANE senders defer the mail" in report
    assert "  DNSSEC secure:   yes" in report
    status, report = await exp.get("/debug?target=ta")
    assert "  matched: 2 0 1 " in report and " on chain[1]" in report
    status, report = await exp.get(f"/debug?domain={DOMAIN}")
    assert status == 200
    assert f"MX bogus.{ZONE}: DANE bogus: " in report  # among the problems
    assert "  DANE: insecure (DANE senders ignore records that are not DNSSEC-secure" in report


async def failures_logged_once(exp: ExporterProcess) -> None:
    def last_probe(text: str) -> float:
        return value(text, "smtp_tls_last_probe_timestamp_seconds", target="mismatch") or 0.0

    before = last_probe(await exp.metrics())
    # mismatch is probed every second: three more probes, each with the same DANE verdict
    await eventually(exp.metrics, lambda t: last_probe(t) > before + 2.5, "3 more probes")
    failed = [
        line
        for line in exp.lines
        if 'msg="DANE check failed"' in line and " target=mismatch " in line
    ]
    assert len(failed) == 1, failed
    assert "level=warn" in failed[0] and "reason=mismatch" in failed[0]
    assert f"tlsa=_25._tcp.mismatch.{ZONE}" in failed[0]
    bogus_mx = [
        line
        for line in exp.lines
        if 'msg="DANE check failed"' in line and f"target=bogus.{ZONE}:25" in line
    ]
    assert len(bogus_mx) == 1 and f"domain={DOMAIN}" in bogus_mx[0], bogus_mx
