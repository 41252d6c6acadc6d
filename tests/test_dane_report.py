"""DANE in the reports and on the command line: the `probe` and `check-domain` reports (text and
JSON, also /debug's), their findings and exit codes, and `--dane` and `--dane-server`, against the
signed zone, validating unbound and Postfix of tests/fixtures/dnssec.py."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest

from exporter import cli as cli_module
from exporter.dane.model import DaneReason
from exporter.domains.command import check_domain_command
from exporter.domains.model import MxCheck
from exporter.domains.report import findings
from exporter.domains.report import render_text as render_domain
from exporter.probe import probe
from exporter.report import render_text, to_json
from exporter.resolve import DnsResolver
from tests import check_results
from tests.dane_results import EE, NEXT, checked, unusable
from tests.fixtures.dnssec import CHILD, ZONE, DnssecWorld
from tests.test_collector import ENFORCED, MX1, enforced, mx_target, starttls_ok


def test_probe_report_of_a_match() -> None:
    text = render_text(checked(starttls_ok()))  # without a transcript: DANE comes last
    assert text[text.index("\n\nDANE (") + 2 :].splitlines() == [
        "DANE (_25._tcp.mail.example.test)",
        "  resolver:        127.0.0.1:53",
        "  DNSSEC secure:   yes",
        f"  TLSA {EE.text()}",
        f"  TLSA {NEXT.text()}",
        "  verdict: OK (DANE senders deliver: the server is authenticated)",
        "  matched: 3 1 1 69a47ce96482… on the leaf",
        "  detail:  detail of ok",
    ]


def test_probe_report_of_problems() -> None:
    text = render_text(checked(starttls_ok(), DaneReason.MISMATCH))
    assert (
        "  verdict: mismatch (DANE senders defer the mail: no usable record matches the served "
        "chain)"
    ) in text
    assert "  detail:  detail of mismatch" in text and "matched:" not in text
    insecure = render_text(checked(starttls_ok(), DaneReason.INSECURE))
    assert "  DNSSEC secure:   NO (AD not set)" in insecure
    text = render_text(dataclasses.replace(starttls_ok(), dane=unusable()))
    assert f"  TLSA 1 1 1 {'ef' * 32}  (unusable: pkix_usage)" in text  # digests in full
    assert "  TLSA unreadable: ValueError: bad digest 0" in text
    bogus = render_text(checked(starttls_ok(), DaneReason.BOGUS))
    assert "DNSSEC secure" not in bogus and "TLSA 3" not in bogus
    assert "verdict: bogus (DANE senders defer the mail: DNSSEC validation" in bogus
    assert "\nDANE" not in render_text(starttls_ok())


def test_probe_report_of_every_address() -> None:
    pool = check_results.POOL
    good = check_results.at(checked(starttls_ok(pool)), check_results.V4, "ipv4")
    old = check_results.at(
        checked(starttls_ok(pool), DaneReason.MISMATCH), check_results.V6, "ipv6"
    )
    result = check_results.pooled(pool, (good, old))
    text = render_text(result)
    assert f"  at {check_results.V4}\n    verdict: OK (" in text
    assert f"  at {check_results.V6}\n    verdict: mismatch (" in text
    data = to_json(result)
    assert data["dane"] is None
    assert [a["dane"]["reason"] for a in data["addresses"]] == ["ok", "mismatch"]


def test_probe_json() -> None:
    data = to_json(checked(starttls_ok()))["dane"]
    assert data == {
        "tlsa_name": "_25._tcp.mail.example.test",
        "reason": "ok",
        "tlsa_present": True,
        "dnssec_secure": True,
        "match": True,
        "detail": "detail of ok",
        "records": [EE.text(), NEXT.text()],
        "unusable": [],
        "unreadable": [],
        "matched": EE.text(),
        "matched_depth": 0,
        "reference_names": ["mail.example.test"],
        "owner": "_25._tcp.mail.example.test",
        "server": "127.0.0.1:53",
        "started_at": data["started_at"],
        "duration": 0.004,
    }
    assert to_json(starttls_ok())["dane"] is None


def test_domain_report_and_findings() -> None:
    def with_mx_dane(reason: DaneReason) -> list[str]:
        result = enforced()
        first = result.mx_checks[0]
        probe_result = checked(starttls_ok(mx_target(ENFORCED, MX1)), reason)
        mx = MxCheck(first.host, first.policy_match, probe_result, first.compliant)
        result = dataclasses.replace(result, mx_checks=(mx, *result.mx_checks[1:]))
        codes = [f.code for f in findings(result)]
        text = render_domain(result)
        return [*codes, *(line for line in text.splitlines() if "DANE" in line)]

    ok = with_mx_dane(DaneReason.OK)
    assert "dane_failed" not in ok
    assert "  DANE: OK (DANE senders deliver: the server is authenticated)" in ok
    assert "dane_failed" not in with_mx_dane(DaneReason.NO_TLSA)
    got = with_mx_dane(DaneReason.EXPIRED)
    assert got.count("dane_failed") == 1
    assert "  - MX mail.example.test: DANE expired: detail of expired" in got, got
    assert any(line.startswith("  DANE: expired (") and "detail of expired" in line for line in got)


# -- the commands, against the real resolver --------------------------------------------------


@pytest.fixture
def resolving_probe(dnssec_world: DnssecWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """`probe` resolves host names through the system; the test zone is the fixture's."""
    resolver = DnsResolver(dnssec_world.resolver.nameservers)
    monkeypatch.setattr(cli_module, "probe", functools.partial(probe, resolver=resolver))


def server(world: DnssecWorld) -> str:
    return f"{world.resolver.host}:{world.resolver.port}"


@pytest.mark.postfix
@pytest.mark.usefixtures("resolving_probe")
def test_probe_command_with_dane(
    dnssec_world: DnssecWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    dane_args = ["--dane", "--dane-server", server(dnssec_world), "--timeout", "10"]
    assert cli_module.probe_command([f"ee.{ZONE}", *dane_args]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK  ee.{ZONE}:25")
    assert f"DANE (_25._tcp.ee.{ZONE})" in out
    assert "  verdict: OK (DANE senders deliver" in out
    assert "  matched: 3 1 1 " in out and " on the leaf" in out
    # the probe succeeds, DANE does not: exit 1
    assert cli_module.probe_command([f"mismatch.{ZONE}", *dane_args, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["success"] is True
    assert (data["dane"]["reason"], data["dane"]["match"]) == ("mismatch", False)
    assert data["dane"]["server"] == server(dnssec_world)
    assert cli_module.probe_command([f"notlsa.{ZONE}", *dane_args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dane"]["reason"] == "no_tlsa"


@pytest.mark.postfix
def test_check_domain_with_dane(
    dnssec_world: DnssecWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--dns-server", server(dnssec_world), "--ca-file", dnssec_world.postfix.ca_file]
    dane_args = ["--dane", "--dane-server", server(dnssec_world)]
    assert check_domain_command([f"good.{ZONE}", *common, *dane_args]) == 0
    out = capsys.readouterr().out
    assert "No problems found." in out
    assert "  DANE: OK (DANE senders deliver: the server is authenticated)" in out

    assert check_domain_command([f"mixed.{ZONE}", *common, *dane_args, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    reasons = {mx["name"]: mx["probe"]["dane"]["reason"] for mx in data["mx_checks"]}
    assert reasons == {
        f"ee.{ZONE}": "ok",
        f"mismatch.{ZONE}": "mismatch",
        f"mx.{CHILD}": "insecure",
        f"bogus.{ZONE}": "bogus",
    }
    names = {mx["probe"]["dane"]["reference_names"][1] for mx in data["mx_checks"]}
    assert names == {f"mixed.{ZONE}"}  # the next-hop domain, RFC 7672 section 3.2.2
    dane_problems = [p for p in data["problems"] if "DANE" in p]
    assert [p.split(": DANE ")[1].split(":")[0] for p in dane_problems] == [
        "mismatch",
        "insecure",
        "bogus",
    ]
    # without --dane: no DANE check
    assert check_domain_command([f"mixed.{ZONE}", *common, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert all(mx["probe"]["dane"] is None for mx in data["mx_checks"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mx.example.test", "--dane"], "--dane needs --dane-server"),
        (["mx.example.test", "--dane-server", "127.0.0.1"], "--dane-server is only used with"),
        (["mx.example.test", "--dane", "--dane-server", "ns.test"], "give an IP address[:port]"),
        (["mx.example.test:587", "--dane", "--dane-server", "::1"], "only for port 25"),
        (["mx.example.test", "--mode", "implicit_tls", "--dane", "--dane-server", "::1"], "only"),
        (["192.0.2.25", "--dane", "--dane-server", "127.0.0.1"], "--dane needs a host name"),
    ],
)
def test_probe_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli_module.probe_command(args)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["example.test", "--dane"], "--dane needs --dane-server"),
        (["example.test", "--dane-server", "127.0.0.1"], "--dane-server is only used with"),
        (["example.test", "--dane", "--dane-server", "::1", "--no-probe"], "needs the MX probes"),
    ],
)
def test_check_domain_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        check_domain_command(args)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
