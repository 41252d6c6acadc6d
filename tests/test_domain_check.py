"""Domain checks against real servers: dnsmasq for the zone, nginx for policies, Postfix for MX.

The checker reaches them only as configured in production: `Dns.configured` with the test name
server, a `ca_file`, port 443 for the policy and port 25 for the MX hosts. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import ssl
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from exporter.domains.check import CachedPolicy, DomainChecker, PolicyCache
from exporter.domains.command import check_domain_command
from exporter.domains.fetch import Dns, lookup_mx
from exporter.domains.model import (
    CheckReason,
    DomainResult,
    MxHost,
    MxStatus,
    Policy,
    StsMode,
    StsState,
)
from exporter.domains.report import problems, render_text, to_json
from exporter.model import VerifyReason

if TYPE_CHECKING:
    from tests.fixtures.zone import MailDomains

# The fixture `mail_domains` comes from tests/fixtures/zone.py (see conftest.py).

EHLO = "prober.example.test"
MAIL = "mail.example.test"
EXPIRED_MX = "expired-mx.example.test"


def checker(world: MailDomains, name: str, *, timeout: float = 3.0) -> DomainChecker:
    return DomainChecker(
        world.domain(name),
        Dns.configured(world.dns.nameservers, timeout=timeout),
        ca_file=world.ca_file,
        timeout=timeout,
        probe_timeout=10.0,
        ehlo_name=EHLO,
        labels={"team": "mail"},
    )


async def check(world: MailDomains, name: str, *, probe_mx: bool = True) -> DomainResult:
    return await checker(world, name).check(probe_mx=probe_mx)


# name: (state, sts reason, record present, mx status, [(mx, preference, match, compliant)],
#        (tlsrpt present, tlsrpt valid, tlsrpt reason))
MxRow = tuple[str, int, bool | None, bool | None]  # name, preference, match, compliant
Rpt = tuple[bool, bool, CheckReason | None]  # present, valid, reason
NO_RPT: Rpt = (False, False, CheckReason.NO_RECORD)
EXPECTED: dict[str, tuple[str, str | None, bool, str, list[MxRow], Rpt]] = {
    "enforce": ("enforce", None, True, "mx", [(MAIL, 10, True, True)], (True, True, None)),
    "testing": ("testing", None, True, "mx", [(MAIL, 10, True, True)], NO_RPT),
    "none": ("none", None, True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "nopolicy": ("invalid", "http_status", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "mismatch": ("enforce", None, True, "mx", [(MAIL, 10, False, True)], NO_RPT),
    "wildcard": (
        "enforce",
        None,
        True,
        "mx",
        [(MAIL, 10, True, True), (EXPIRED_MX, 20, True, False)],
        (True, True, None),
    ),
    "expired": ("enforce", None, True, "mx", [(EXPIRED_MX, 10, True, False)], NO_RPT),
    "nostarttls": (
        "enforce",
        None,
        True,
        "mx",
        [("nostarttls-mx.example.test", 10, True, False)],
        NO_RPT,
    ),
    "redirect": ("invalid", "redirect", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "ctype": ("invalid", "content_type", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "large": ("invalid", "too_large", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "largechunked": ("invalid", "too_large", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "badpolicy": ("invalid", "parse_error", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "badtxt": (
        "invalid",
        "bad_record",
        True,
        "mx",
        [(MAIL, 10, None, True)],
        (True, False, CheckReason.BAD_RECORD),
    ),
    "twotxt": (
        "invalid",
        "multiple_records",
        True,
        "mx",
        [(MAIL, 10, None, True)],
        (True, False, CheckReason.MULTIPLE_RECORDS),
    ),
    "badcert": ("invalid", "tls_error", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "silent": ("invalid", "timeout", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "refused": ("invalid", "connection_error", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    # Nothing listens on its policy host's address unless a test puts a scripted server there.
    "trickle": ("invalid", "connection_error", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "nohost": ("invalid", "dns_error", True, "mx", [(MAIL, 10, None, True)], NO_RPT),
    "nullmx": ("absent", "no_record", False, "null", [], (True, True, None)),
    # No MX: the domain itself, whose address is Postfix's, whose certificate names mail.*
    "implicit": (
        "absent",
        "no_record",
        False,
        "implicit",
        [("implicit.example.test", 0, None, False)],
        NO_RPT,
    ),
}


@pytest.mark.postfix
@pytest.mark.parametrize("name", list(EXPECTED))
async def test_every_domain_state(mail_domains: MailDomains, name: str) -> None:
    state, reason, present, mx_status, mx, rpt = EXPECTED[name]
    r = await check(mail_domains, name)
    assert r.domain == f"{name}.example.test"
    assert r.labels == (("team", "mail"),)
    assert r.sts.state == state, r.sts.failure
    assert (str(r.sts.failure.reason) if r.sts.failure else None) == reason, r.sts.failure
    assert r.sts.record_present is present
    assert r.sts.policy_valid is (state in ("enforce", "testing", "none"))
    assert r.mx.status == mx_status, r.mx.detail
    got = [(c.name, c.host.preference, c.policy_match, c.compliant) for c in r.mx_checks]
    assert got == mx, [c.probe.failure if c.probe else None for c in r.mx_checks]
    present_rpt, valid_rpt, reason_rpt = rpt
    assert r.tlsrpt.record_present is present_rpt
    assert r.tlsrpt.valid is valid_rpt
    assert (r.tlsrpt.failure.reason if r.tlsrpt.failure else None) == reason_rpt
    json.dumps(to_json(r))  # always serialisable
    assert render_text(r).startswith(f"Domain {name}.example.test")


@pytest.mark.postfix
async def test_enforce_domain_in_detail(mail_domains: MailDomains) -> None:
    r = await check(mail_domains, "enforce")
    sts = r.sts
    assert sts.record is not None and sts.record.id == "enforce1"
    assert sts.policy == Policy(StsMode.ENFORCE, 604800, (MAIL,))
    assert sts.policy_url == "https://mta-sts.enforce.example.test/.well-known/mta-sts.txt"
    assert sts.policy_address is not None and sts.policy_address.startswith("127.")
    assert sts.from_cache is False
    assert sts.policy_fetched_at == pytest.approx(time.time(), abs=30)
    assert r.tlsrpt.record is not None
    assert r.tlsrpt.record.rua == ("mailto:tlsrpt@example.test",)
    (mx,) = r.mx_checks
    p = mx.probe
    assert p is not None
    assert p.target.host == MAIL and p.target.port == 25 and p.target.server_name == MAIL
    assert dict(p.target.labels) == {"team": "mail", "domain": r.domain, "mx_preference": "10"}
    assert p.peer_address == mail_domains.mx_addresses[MAIL]
    assert p.success and p.smtp.starttls_advertised is True
    assert p.verification is not None and p.verification.reason is VerifyReason.OK
    assert problems(r) == []


@pytest.mark.postfix
async def test_testing_policy_split_txt_and_charset(mail_domains: MailDomains) -> None:
    r = await check(mail_domains, "testing", probe_mx=False)
    assert r.sts.records == ("v=STSv1; id=testing1",)  # two TXT strings, joined
    assert r.sts.policy is not None and r.sts.policy.mode is StsMode.TESTING
    assert r.mx_checks[0].probe is None and r.mx_checks[0].compliant is None


@pytest.mark.postfix
async def test_wildcard_policy_flags_its_ip_pattern(mail_domains: MailDomains) -> None:
    r = await check(mail_domains, "wildcard")
    assert r.sts.policy is not None
    assert r.sts.policy.mx == ("*.example.test",)
    assert [p.pattern for p in r.sts.policy.invalid_mx] == ["192.0.2.25"]
    assert r.tlsrpt.record is not None
    assert r.tlsrpt.record.rua == (
        "mailto:tlsrpt@example.test",
        "https://reports.example.test/tlsrpt",
    )
    assert problems(r) == [
        "MTA-STS policy: mx '192.0.2.25' is ignored by senders: an IP address, not a host name",
        "MX expired-mx.example.test is not MTA-STS compliant: certificate not trusted: expired",
    ]


@pytest.mark.postfix
async def test_expired_mx_under_enforce(mail_domains: MailDomains) -> None:
    r = await check(mail_domains, "expired")
    (mx,) = r.mx_checks
    assert mx.probe is not None and mx.probe.verification is not None
    assert mx.probe.success  # verify: report, as for any MX: the facts are all there
    assert mx.probe.verification.trusted is False
    assert mx.probe.verification.reason is VerifyReason.EXPIRED
    assert mx.probe.certificate is not None
    assert mx.probe.certificate.not_after < time.time()
    assert mx.compliant is False
    text = render_text(r)
    assert "MX expired-mx.example.test is not MTA-STS compliant: certificate not trusted" in text


@pytest.mark.postfix
async def test_mismatch_and_missing_starttls_are_problems(
    mail_domains: MailDomains,
) -> None:
    r = await check(mail_domains, "mismatch")
    assert problems(r) == [
        "MX mail.example.test matches no mx pattern of the enforce policy: "
        "MTA-STS senders will not deliver to it"
    ]
    r = await check(mail_domains, "nostarttls")
    (mx,) = r.mx_checks
    assert mx.probe is not None and mx.probe.smtp.starttls_advertised is False
    assert problems(r) == [
        "MX nostarttls-mx.example.test is not MTA-STS compliant: "
        "probe failed at starttls: starttls_not_advertised"
    ]


@pytest.mark.postfix
@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("redirect", "HTTP 301 Moved Permanently to https://mta-sts.enforce.example.test/"),
        ("ctype", "Content-Type 'text/html', not text/plain"),
        ("large", "bytes, over 65536"),  # refused on its Content-Length
        ("largechunked", "over 65536 bytes"),  # no length given: refused after 64 KiB + 1
        ("nopolicy", "HTTP 404 Not Found"),
        ("badpolicy", "no mx field, required in mode enforce"),
        ("badcert", "Hostname mismatch"),
        ("refused", "Connection refused"),
        ("nohost", "mta-sts.nohost.example.test: no such name (NXDOMAIN)"),
        ("badtxt", "id 'not-valid!' is not 1 to 32 letters and digits"),
        ("twotxt", "2 TXT records start with v=STSv1; senders use none"),
    ],
)
async def test_failure_details(mail_domains: MailDomains, name: str, detail: str) -> None:
    r = await check(mail_domains, name, probe_mx=False)
    assert r.sts.failure is not None
    assert detail in r.sts.failure.detail
    assert any(line.startswith(f"MTA-STS {r.sts.failure.reason}: ") for line in problems(r))


@pytest.mark.postfix
async def test_redirect_is_not_followed(mail_domains: MailDomains) -> None:
    target = "mta-sts.enforce.example.test"
    before = mail_domains.nginx.requests(target)
    r = await check(mail_domains, "redirect", probe_mx=False)
    assert r.sts.failure is not None and r.sts.failure.reason is CheckReason.REDIRECT
    assert mail_domains.nginx.requests("mta-sts.redirect.example.test") >= 1
    assert mail_domains.nginx.requests(target) == before


@pytest.mark.postfix
async def test_a_silent_policy_host_costs_only_the_timeout(
    mail_domains: MailDomains,
) -> None:
    c = checker(mail_domains, "silent", timeout=1.0)
    start = time.monotonic()
    r = await c.check(probe_mx=False)
    elapsed = time.monotonic() - start
    assert r.sts.failure is not None and r.sts.failure.reason is CheckReason.TIMEOUT
    assert 1.0 <= elapsed < 2.5


@pytest.mark.postfix
async def test_a_trickling_policy_host_cannot_hold_the_fetch(
    mail_domains: MailDomains,
    tmp_path: pathlib.Path,
) -> None:
    # One header byte every 0.1 s: each read returns well within any socket timeout, so only a
    # deadline over the whole exchange stops it.
    domain = mail_domains.domain("trickle")
    cert, key = mail_domains.pki.leaf([f"mta-sts.{domain}"]).write(tmp_path, "trickle")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    requests: list[bytes] = []
    closed = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.1)  # the misbehaviour's pace, not synchronisation
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            closed.set()

    server = await asyncio.start_server(
        trickle, mail_domains.policy_address("trickle"), 443, ssl=tls
    )
    async with server:
        c = checker(mail_domains, "trickle", timeout=1.0)
        start = time.monotonic()
        r = await c.check(probe_mx=False)
        elapsed = time.monotonic() - start
        assert r.sts.failure is not None and r.sts.failure.reason is CheckReason.TIMEOUT
        assert 1.0 <= elapsed < 2.0
        (request,) = requests
        assert request.startswith(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
        assert f"Host: mta-sts.{domain}\r\n".encode() in request
        # The worker thread let go of the connection when the deadline passed.
        await asyncio.wait_for(closed.wait(), 5)


@pytest.mark.postfix
async def test_policy_is_cached_until_the_interval_passes(
    mail_domains: MailDomains,
) -> None:
    now = [1_000_000.0]
    c = DomainChecker(
        mail_domains.domain("enforce"),
        Dns.configured(mail_domains.dns.nameservers, timeout=3),
        ca_file=mail_domains.ca_file,
        policy_max_interval=3600,
        clock=lambda: now[0],
    )
    host = "mta-sts.enforce.example.test"
    start = mail_domains.nginx.requests(host)
    first = await c.check(probe_mx=False)
    assert first.sts.from_cache is False and mail_domains.nginx.requests(host) == start + 1
    now[0] += 600
    second = await c.check(probe_mx=False)
    assert second.sts.from_cache is True and second.sts.policy == first.sts.policy
    assert second.sts.policy_fetched_at == first.sts.policy_fetched_at
    assert mail_domains.nginx.requests(host) == start + 1  # no request: from the cache
    now[0] += 3600
    third = await c.check(probe_mx=False)
    assert third.sts.from_cache is False and mail_domains.nginx.requests(host) == start + 2


@pytest.mark.postfix
async def test_mx_probes_can_run_apart(mail_domains: MailDomains) -> None:
    c = checker(mail_domains, "wildcard")
    r = await c.check(probe_mx=False)
    assert [(m.probe, m.compliant) for m in r.mx_checks] == [(None, None), (None, None)]
    targets = [c.mx_target(m.host) for m in r.mx_checks]
    assert [t.name for t in targets] == [f"{MAIL}:25", f"{EXPIRED_MX}:25"]
    probed = await c.probe_mx(r)
    assert [m.compliant for m in probed.mx_checks] == [True, False]
    assert probed.sts == r.sts


@pytest.mark.postfix
@pytest.mark.parametrize(
    ("name", "status", "hosts"),
    [
        ("enforce", MxStatus.MX, (MxHost(MAIL, 10),)),
        ("wildcard", MxStatus.MX, (MxHost(MAIL, 10), MxHost(EXPIRED_MX, 20))),
        ("nullmx", MxStatus.NULL, ()),
        ("implicit", MxStatus.IMPLICIT, (MxHost("implicit.example.test", 0),)),
    ],
)
async def test_mx_lookup(
    mail_domains: MailDomains,
    name: str,
    status: MxStatus,
    hosts: tuple[MxHost, ...],
) -> None:
    mx = await lookup_mx(Dns.configured(mail_domains.dns.nameservers), mail_domains.domain(name))
    assert (mx.status, mx.hosts) == (status, hosts)


@pytest.mark.postfix
async def test_mx_lookup_of_a_missing_domain(mail_domains: MailDomains) -> None:
    dnsx = Dns.configured(mail_domains.dns.nameservers)
    mx = await lookup_mx(dnsx, "nowhere.example.test")
    assert mx.status is MxStatus.NONE and "NXDOMAIN" in mx.detail
    # A name that exists (it has TXT) but has neither MX nor address:
    mx = await lookup_mx(dnsx, "_mta-sts.enforce.example.test")
    assert mx.status is MxStatus.NONE and "no MX record, and no address" in mx.detail


@pytest.fixture
def silent_dns() -> Iterator[tuple[str, int]]:
    """A UDP and TCP port on loopback that never answers a DNS query."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        yield udp.getsockname()


async def test_dns_that_does_not_answer(silent_dns: tuple[str, int]) -> None:
    c = DomainChecker("example.test", Dns.configured([silent_dns], timeout=0.3), timeout=0.3)
    r = await c.check()
    assert r.mx.status is MxStatus.ERROR
    assert r.sts.state is StsState.INVALID
    assert r.sts.failure is not None and r.sts.failure.reason is CheckReason.DNS_ERROR
    assert r.tlsrpt.failure is not None and r.tlsrpt.failure.reason is CheckReason.DNS_ERROR
    assert r.mx_checks == ()
    assert len(problems(r)) == 3


# -- the cache alone ----------------------------------------------------------------------------


def cached(record_id: str = "a", fetched_at: float = 0.0, max_age: int = 86400) -> CachedPolicy:
    policy = Policy(StsMode.ENFORCE, max_age, ("mx.example",))
    return CachedPolicy(record_id, policy, "", "", "127.0.0.1", fetched_at)


def test_cache_hits_while_fresh_and_id_unchanged() -> None:
    cache = PolicyCache(max_interval=3600)
    assert cache.get("a", 0.0) is None
    entry = cached()
    cache.put(entry)
    assert cache.get("a", 100.0) is entry
    assert cache.get("b", 100.0) is None  # a new id: fetch again
    assert cache.get("a", 3600.0) is None  # an interval later
    assert cache.get("a", 3500.0) is None  # just under one interval counts as one
    cache.clear()
    assert cache.get("a", 1.0) is None


def test_cache_never_outlives_the_policy_max_age() -> None:
    cache = PolicyCache(max_interval=3600)
    cache.put(cached(max_age=60))
    assert cache.get("a", 30.0) is not None
    assert cache.get("a", 60.0) is None
    cache.put(cached(max_age=0))
    assert cache.get("a", 0.0) is None


# -- the command --------------------------------------------------------------------------------


@pytest.mark.postfix
def test_command_json(mail_domains: MailDomains, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        mail_domains.domain("enforce"),
        "--json",
        "--dns-server",
        f"{mail_domains.dns.host}:{mail_domains.dns.port}",
        "--ca-file",
        mail_domains.ca_file,
        "--timeout",
        "5",
        "--ehlo-name",
        EHLO,
    ]
    assert check_domain_command(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["domain"] == "enforce.example.test"
    assert out["problems"] == []
    assert out["mx"]["hosts"] == [{"name": MAIL, "preference": 10}]
    assert out["mta_sts"]["state"] == "enforce" and out["mta_sts"]["id"] == "enforce1"
    assert out["mta_sts"]["policy"]["mx"] == [MAIL]
    assert out["tlsrpt"]["valid"] is True
    (mx,) = out["mx_checks"]
    assert (mx["policy_match"], mx["compliant"], mx["why"]) == (True, True, "compliant")
    assert mx["probe"]["cert_verify_reason"] == "ok"


@pytest.mark.postfix
def test_command_text_exits_1_on_problems(
    mail_domains: MailDomains,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        mail_domains.domain("expired"),
        "--dns-server",
        f"{mail_domains.dns.host}:{mail_domains.dns.port}",
        "--ca-file",
        mail_domains.ca_file,
        "--ehlo-name",
        EHLO,
    ]
    assert check_domain_command(args) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS (1)" in out
    assert "MTA-STS: enforce" in out
    assert "TXT _mta-sts.expired.example.test: 'v=STSv1; id=ex1'" in out
    assert "10 expired-mx.example.test  policy match: yes  compliant: NO" in out
    assert "TLS-RPT: absent" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not a domain"], "is not a domain name"),
        (["localhost"], "is not a domain name"),
        (["example.test", "--timeout", "0"], "--timeout must be positive"),
        (["example.test", "--dns-server", "ns.example.test"], "give an IP address[:port]"),
        (["example.test", "--dns-server", "127.0.0.1:99999"], "is not a port"),
        (["example.test", "--ca-file", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
    ],
)
def test_command_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        check_domain_command(args)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
