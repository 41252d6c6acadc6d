"""Mail domains in the running exporter: a subprocess configured with the test domains, scraped.

The exporter reaches the real dnsmasq (the zone), nginx (the policy hosts) and Postfix (the MX
hosts) of tests/fixtures/zone.py only through its config: `dns.nameservers`, `defaults.ca_file`.
What each domain should show is the table of test_domain_check.py, which checks the same domains
through DomainChecker directly.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.test_domain_check import EXPECTED
from tests.test_service_e2e import eventually, exporter_process, run_cli, samples

if TYPE_CHECKING:
    from tests.fixtures.zone import MailDomains
    from tests.test_service_e2e import ExporterProcess

EHLO = "prober.example.test"
EXPIRED_MX = "expired-mx.example.test"
STATES = ("enforce", "testing", "none", "absent", "invalid")
# Every test domain but `trickle`, whose policy host needs a scripted server of its own test.
DOMAINS = [name for name in EXPECTED if name != "trickle"]
# The policy host that never answers costs its domain's timeout; keep that short.
TIMEOUTS = {"silent": "1s"}


def write_config(path: Path, world: MailDomains, names: list[str], dns_timeout: str = "2s") -> None:
    entries = []
    for name in names:
        timeout = f", timeout: {TIMEOUTS[name]}" if name in TIMEOUTS else ""
        entries.append(f"  - {{name: {world.domain(name)}, labels: {{team: mail}}{timeout}}}\n")
    path.write_text(
        "defaults:\n"
        "  timeout: 5s\n"
        f"  ehlo_name: {EHLO}\n"
        f"  ca_file: {world.ca_file}\n"
        "dns:\n"
        f'  nameservers: ["{world.dns.host}:{world.dns.port}"]\n'
        f"  timeout: {dns_timeout}\n"
        "targets:\n"
        # A target by name: only the configured name server knows it.
        "  - {name: mail-by-name, host: mail.example.test, port: 25}\n"
        "domains:\n" + "".join(entries)
    )


Samples = list[tuple[str, dict[str, str], float]]


def value(parsed: Samples, name: str, **labels: str) -> float | None:
    """The first sample `name` with these labels, from an exposition parsed once (it is large)."""
    for n, ls, v in parsed:
        if n == name and all(ls.get(k) == want for k, want in labels.items()):
            return v
    return None


async def scrape(exp: ExporterProcess) -> Samples:
    return samples(await exp.metrics())


def checked(parsed: Samples, domains: list[str]) -> bool:
    """Every domain has a result (MX probes included: they are recorded with the check)."""
    stamp = "smtp_tls_domain_last_check_timestamp_seconds"
    return all(value(parsed, stamp, domain=d) is not None for d in domains)


def domain_names(parsed: Samples) -> set[str]:
    return {labels["domain"] for _, labels, _ in parsed if "domain" in labels}


@pytest.mark.postfix
async def test_every_domain_state_through_the_exporter(
    tmp_path: Path, mail_domains: MailDomains
) -> None:
    path = tmp_path / "config.yml"
    write_config(path, mail_domains, DOMAINS)
    domains = [mail_domains.domain(n) for n in DOMAINS]
    with exporter_process(path) as exp:
        text = await eventually(
            lambda: scrape(exp), lambda t: checked(t, domains), "every domain checked"
        )
        assert value(text, "smtp_tls_exporter_domains") == len(DOMAINS)
        for name in DOMAINS:
            assert_domain(text, mail_domains.domain(name), name)

        # dns.nameservers applies to targets too.
        assert value(text, "smtp_tls_probe_success", target="mail-by-name") == 1
        # MX probes are scheduled probes: counted with the target's.
        mx_probes = sum(len(EXPECTED[n][4]) for n in DOMAINS)
        total = sum(v for n, _, v in text if n == "smtp_tls_exporter_probes_total")
        assert total >= mx_probes + 1

        # One WARNING line per failed check, with the domain and the first problem's reason.
        line = exp.wait_line(
            lambda s: "domain=nopolicy.example.test" in s and "level=warn" in s,
            5,
            "the nopolicy domain's warning",
        )
        assert re.search(
            r'msg="domain check failed" domain=nopolicy\.example\.test mta_sts=invalid '
            r"duration=\S+ reason=http_status problems=1 "
            r'detail="MTA-STS http_status: .*HTTP 404 Not Found"$',
            line,
        ), line
        line = exp.wait_line(
            lambda s: "domain=expired.example.test" in s and "domain check failed" in s,
            5,
            "the expired domain's warning",
        )
        assert "reason=mx_not_compliant" in line
        warned = [s for s in exp.lines if "domain check failed" in s]
        assert not [s for s in warned if "domain=enforce.example.test " in s]

        status, page = await exp.get("/")
        assert status == 200
        assert f"<h2>Mail domains ({len(DOMAINS)})</h2>" in page
        assert 'href="debug?domain=expired.example.test"' in page
        status, report = await exp.get("/debug?domain=expired.example.test")
        assert status == 200
        assert "MX expired-mx.example.test is not MTA-STS compliant" in report
        assert exp.stop() == 0


def assert_domain(text: Samples, domain: str, name: str) -> None:
    """The exporter's series for `domain` say what EXPECTED[name] says."""
    state, reason, present, mx_status, mx_rows, rpt = EXPECTED[name]
    base = {"domain": domain, "team": "mail"}
    modes = {s: value(text, "smtp_tls_mta_sts_mode", mode=s, **base) for s in STATES}
    assert modes == {s: float(s == state) for s in STATES}, (name, modes)
    assert value(text, "smtp_tls_mta_sts_record_present", **base) == present, name
    valid = state in ("enforce", "testing", "none")
    assert value(text, "smtp_tls_mta_sts_policy_valid", **base) == valid, name
    failures = [
        labels["reason"]
        for n, labels, v in text
        if n == "smtp_tls_mta_sts_policy_fetch_failure_info" and labels["domain"] == domain
    ]
    assert failures == ([reason] if reason else []), name
    max_age = value(text, "smtp_tls_mta_sts_max_age_seconds", **base)
    assert (max_age is not None) is valid, name
    count = value(text, "smtp_tls_mx_count", **base)
    assert count == (0 if mx_status == "null" else len(mx_rows)), name
    for host, preference, match, compliant in mx_rows:
        mx = {**base, "mx": host}
        got = value(text, "smtp_tls_mta_sts_mx_match", **mx)
        assert got == (None if match is None else float(match)), (name, host, got)
        assert value(text, "smtp_tls_mta_sts_mx_compliant", **mx) == compliant, (name, host)
        # The MX probe's own series, with the domain and the preference.
        probe = {**base, "target": f"{host}:25", "mx_preference": str(preference)}
        assert value(text, "smtp_tls_probe_success", **probe) is not None, (name, host)
    mx_series = {
        labels["mx"]
        for n, labels, _ in text
        if n.startswith("smtp_tls_mta_sts_mx_") and labels["domain"] == domain
    }
    assert mx_series == {host for host, *_ in mx_rows}, name
    rpt_present, rpt_valid, _ = rpt
    assert value(text, "smtp_tls_tlsrpt_record_present", **base) == rpt_present, name
    assert value(text, "smtp_tls_tlsrpt_record_valid", **base) == rpt_valid, name


@pytest.mark.postfix
async def test_reload_keeps_unchanged_domains_and_drops_removed_ones(
    tmp_path: Path, mail_domains: MailDomains
) -> None:
    path = tmp_path / "config.yml"
    enforce, wildcard, expired = (
        mail_domains.domain(n) for n in ("enforce", "wildcard", "expired")
    )
    policy_host = f"mta-sts.{enforce}"

    async def fetches() -> int:
        return mail_domains.nginx.requests(policy_host)  # from nginx's access log

    before = await fetches()
    write_config(path, mail_domains, ["enforce", "wildcard"])
    stamp = "smtp_tls_domain_last_check_timestamp_seconds"
    with exporter_process(path) as exp:
        text = await eventually(
            lambda: scrape(exp), lambda t: checked(t, [enforce, wildcard]), "both domains checked"
        )
        first_check = value(text, stamp, domain=enforce)
        await eventually(fetches, lambda n: n == before + 1, "the policy fetch in nginx's log")
        assert value(text, "smtp_tls_probe_success", domain=wildcard, mx_preference="20") == 1

        # wildcard removed, expired added; enforce unchanged keeps its task and its schedule
        # (interval 1h: not checked again, its policy not fetched again).
        write_config(path, mail_domains, ["enforce", "expired"])
        status, body = await exp.post("/-/reload")
        assert (status, body) == (200, f"{path}: reloaded (1 targets, 2 domains)\n")
        text = await eventually(
            lambda: scrape(exp), lambda t: checked(t, [expired]), "expired checked"
        )
        assert domain_names(text) == {enforce, expired}
        assert value(text, stamp, domain=enforce) == first_check
        assert await fetches() == before + 1
        assert value(text, "smtp_tls_mta_sts_mx_compliant", domain=expired, mx=EXPIRED_MX) == 0

        # Another DNS config: every domain gets a new checker and is checked at once.
        write_config(path, mail_domains, ["enforce", "expired"], dns_timeout="3s")
        exp.signal(signal.SIGHUP)
        text = await eventually(
            lambda: scrape(exp),
            lambda t: (value(t, stamp, domain=enforce) or 0) > (first_check or 0),
            "enforce checked again",
        )
        # A new checker starts with an empty policy cache.
        await eventually(fetches, lambda n: n == before + 2, "the policy fetched again")
        line = exp.wait_line(lambda s: "config reloaded" in s and "dns=changed" in s, 5, "reload")
        assert "domains=2" in line
        assert exp.stop() == 0


def test_config_check_counts_domains(tmp_path: Path) -> None:
    # --config.check validates dns and domains without looking anything up.
    path = tmp_path / "config.yml"
    path.write_text(
        "dns:\n  nameservers: [127.0.0.1]\ntargets: []\n"
        "domains: [a.example.test, {name: b.example.test, probe_mx: false}]\n"
    )
    done = run_cli(f"--config.file={path}", "--config.check", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"{path}: OK (0 targets, 2 domains)\n")
    path.write_text("targets: []\ndomains: [localhost]\ndns: {nameservers: [ns.example.test]}\n")
    done = run_cli(f"--config.file={path}", "--config.check", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[1:] == [
        '  dns.nameservers[0]: "ns.example.test" is not an IP address or IP:port ([IPv6]:port)',
        '  domains[0]: "localhost" is not a domain name (two or more labels of letters, digits'
        " and hyphens)",
    ]
