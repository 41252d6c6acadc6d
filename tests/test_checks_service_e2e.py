"""The opt-in checks and all_addresses in the running exporter: a subprocess configured for them,
scraped, against the real Postfix, real DNS (dnsmasq) and scripted servers."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.fixtures.dns import HostsDns, PoolDns
from tests.test_all_addresses import one_port
from tests.test_checks_scripted import Server
from tests.test_service_e2e import eventually, exporter_process, samples, value

if TYPE_CHECKING:
    from tests.fixtures.postfix import PostfixServer
    from tests.fixtures.zone import MailDomains

VERSIONS = ("TLS 1.0", "TLS 1.1", "TLS 1.2")
# Postfix listener -> its checks in the config.
CHECKED = {
    "relay_25": "{starttls_injection: true, protocols: true}",
    "modern_tls": "{protocols: true}",
    "smtps_465": "{protocols: true}",
    "submission_encrypt": "{submission_requires_tls: true}",
    "submission_587": "{submission_requires_tls: true}",
    "no_starttls": "{starttls_injection: true}",
}


def accepted(text: str, **labels: str) -> tuple[float | None, ...]:
    return tuple(value(text, "smtp_tls_protocol_accepted", version=v, **labels) for v in VERSIONS)


def has_checks(text: str) -> bool:
    return (
        all(value(text, "smtp_tls_check_last_run_timestamp_seconds", target=n) for n in CHECKED)
        and value(text, "smtp_tls_check_last_run_timestamp_seconds", target="pool") is not None
        and accepted(text, target="pool", address=pool_good_address(text)) != (None,) * 3
    )


def pool_good_address(text: str) -> str:
    for name, labels, v in samples(text):
        if name == "smtp_tls_probe_success" and labels.get("target") == "pool" and v == 1:
            return labels["address"]
    return ""


@pytest.mark.postfix
async def test_checks_and_every_address_against_postfix(
    tmp_path: Path, postfix: PostfixServer, pool_dns: PoolDns
) -> None:
    lines = []
    for name, checks in CHECKED.items():
        lst = postfix.listener(name)
        lines.append(
            f"  - {{name: {name}, host: {lst.host}, port: {lst.port}, mode: {lst.mode}, "
            f"server_name: {lst.server_name}, checks: {checks}}}\n"
        )
    lines.append(
        f"  - {{name: pool, host: {pool_dns.name}, port: 25, server_name: mail.example.test, "
        "all_addresses: true, checks: {protocols: true}}\n"
    )
    path = tmp_path / "config.yml"
    path.write_text(
        "defaults:\n"
        "  interval: 1s\n"
        "  timeout: 1s\n"
        "  ehlo_name: exporter.test\n"
        f"  ca_file: {postfix.ca_file}\n"
        "dns:\n"
        f'  nameservers: ["{pool_dns.server.host}:{pool_dns.server.port}"]\n'
        "targets:\n" + "".join(lines)
    )
    with exporter_process(path) as exp:
        text = await eventually(exp.metrics, has_checks, "every check's first run")
        v = value
        assert v(text, "smtp_tls_starttls_injection_vulnerable", target="relay_25") == 0
        assert accepted(text, target="relay_25") == (1, 1, 1)  # Postfix's default
        assert accepted(text, target="modern_tls") == (0, 0, 1)
        assert accepted(text, target="smtps_465") == (1, 1, 1)
        assert v(text, "smtp_tls_submission_requires_tls", target="submission_encrypt") == 1
        assert v(text, "smtp_tls_submission_requires_tls", target="submission_587") == 0
        # no STARTTLS, no verdict: the failure says why
        assert v(text, "smtp_tls_starttls_injection_vulnerable", target="no_starttls") is None
        failure = {"check": "starttls_injection", "stage": "starttls"}
        info = v(text, "smtp_tls_check_failure_info", target="no_starttls", **failure)
        assert info == 1
        # checks that are not enabled have no series
        assert accepted(text, target="submission_encrypt") == (None,) * 3
        assert v(text, "smtp_tls_submission_requires_tls", target="relay_25") is None

        # every address of the pool: the good one served, the dead ones refused, each labelled
        pool = {
            labels["address"]: (labels["ip_family"], val)
            for name, labels, val in samples(text)
            if name == "smtp_tls_probe_success" and labels.get("target") == "pool"
        }
        expected = {pool_dns.good: ("ipv4", 1.0), pool_dns.dead: ("ipv4", 0.0)}
        if pool_dns.ipv6:
            expected[pool_dns.ipv6] = ("ipv6", 0.0)
        assert pool == expected
        assert accepted(text, target="pool", address=pool_dns.good) == (1, 1, 1)
        dead = {"target": "pool", "address": pool_dns.dead, "check": "protocols"}
        assert v(text, "smtp_tls_check_failure_info", reason="connection_refused", **dead) == 1
        assert accepted(text, target="pool", address=pool_dns.dead) == (None,) * 3

        # The probes go on every second; the checks keep their first run's results (1d).
        first_run = v(text, "smtp_tls_check_last_run_timestamp_seconds", target="modern_tls")
        probed = v(text, "smtp_tls_last_probe_timestamp_seconds", target="modern_tls")
        assert probed is not None
        later = await eventually(
            exp.metrics,
            lambda t: (
                (v(t, "smtp_tls_last_probe_timestamp_seconds", target="modern_tls") or 0)
                > probed + 1.5
            ),
            "two more probes",
        )
        assert v(later, "smtp_tls_check_last_run_timestamp_seconds", target="modern_tls") == (
            first_run
        )
        assert accepted(later, target="modern_tls") == (0, 0, 1)


async def test_addresses_that_leave_dns_lose_their_series_and_new_ones_are_checked_at_once(
    tmp_path: Path, hosts_dns: HostsDns, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    name = f"pool.{hosts_dns.server.zone}"
    vulnerable = Server(server_tls, keep_pending=True)
    hosts_dns.publish(name, ["127.0.0.1", "127.0.0.2"])
    async with one_port(vulnerable, ["127.0.0.1", "127.0.0.2"], []) as port:
        path = tmp_path / "config.yml"
        path.write_text(
            "defaults: {interval: 1s, timeout: 1s, ehlo_name: exporter.test}\n"
            f'dns: {{nameservers: ["{hosts_dns.server.host}:{hosts_dns.server.port}"]}}\n'
            "targets:\n"
            f"  - {{name: pool, host: {name}, port: {port}, server_name: scripted.test, "
            f"ca_file: {ca_file}, all_addresses: true, checks: {{starttls_injection: true}}}}\n"
        )
        with exporter_process(path) as exp:

            async def addresses(metric: str) -> set[str]:
                return {
                    labels["address"]
                    for n, labels, _ in samples(await exp.metrics())
                    if n == metric and labels.get("target") == "pool"
                }

            injection = "smtp_tls_starttls_injection_vulnerable"
            both = {"127.0.0.1", "127.0.0.2"}
            await eventually(lambda: addresses(injection), lambda a: a == both, "both checked")
            text = await exp.metrics()
            for address in both:
                assert value(text, injection, target="pool", address=address) == 1
            stamp = value(text, "smtp_tls_check_last_run_timestamp_seconds", address="127.0.0.1")

            hosts_dns.publish(name, ["127.0.0.1"])
            await eventually(
                lambda: addresses("smtp_tls_probe_success"), lambda a: a == {"127.0.0.1"}, "one"
            )
            text = await exp.metrics()
            assert {a for n, lab, _ in samples(text) for a in [lab.get("address")] if a} == {
                "127.0.0.1"
            }, "every series of 127.0.0.2 is gone, its checks' too"

            hosts_dns.publish(name, ["127.0.0.1", "127.0.0.2"])
            await eventually(lambda: addresses(injection), lambda a: a == both, "checked again")
            # the newcomer was checked at once; the address that stayed was not checked again
            text = await exp.metrics()
            again = value(text, "smtp_tls_check_last_run_timestamp_seconds", address="127.0.0.1")
            assert again == stamp


@pytest.mark.postfix
async def test_mx_hosts_get_their_domains_checks_and_every_address(
    tmp_path: Path, mail_domains: MailDomains
) -> None:
    domain = mail_domains.domain("enforce")
    path = tmp_path / "config.yml"
    path.write_text(
        "defaults: {timeout: 5s, ehlo_name: exporter.test}\n"
        f'dns: {{nameservers: ["{mail_domains.dns.host}:{mail_domains.dns.port}"]}}\n'
        "targets: []\n"
        "domains:\n"
        f"  - {{name: {domain}, all_addresses: true, ca_file: {mail_domains.ca_file}, "
        "checks: {starttls_injection: true, protocols: true}}\n"
    )
    mx = "mail.example.test"
    address = mail_domains.mx_addresses[mx]
    labels = {"domain": domain, "target": f"{mx}:25", "address": address, "ip_family": "ipv4"}

    def checked(text: str) -> bool:
        return value(text, "smtp_tls_starttls_injection_vulnerable", **labels) is not None

    with exporter_process(path) as exp:
        text = await eventually(exp.metrics, checked, "the MX host's checks")
        assert value(text, "smtp_tls_starttls_injection_vulnerable", **labels) == 0
        assert accepted(text, **labels) == (1, 1, 1)
        assert value(text, "smtp_tls_probe_success", **labels) == 1
        assert value(text, "smtp_tls_mta_sts_mx_compliant", domain=domain, mx=mx) == 1
