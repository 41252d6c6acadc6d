"""DANE against real peers: a signed zone on NSD, validating unbound, the real probe and Postfix."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from exporter.dane.check import check_dane
from exporter.dane.lookup import DaneDns
from exporter.dane.model import DaneReason, DaneResult, LookupStatus
from exporter.model import Reason, Target
from exporter.probe import probe
from exporter.resolve import DnsResolver
from tests.fixtures.dnssec import CHILD, LAME, SPECS, ZONE, DnssecWorld, MxSpec

pytestmark = pytest.mark.postfix


async def _probe_and_check(world: DnssecWorld, host: str, dane: DaneDns) -> DaneResult:
    """What the exporter will do: probe HOST:25 (resolved through the validating resolver),
    then check DANE on what it was served."""
    resolver = DnsResolver(world.resolver.nameservers)
    target = Target.create(host, 25, ca_file=world.postfix.ca_file, timeout=10)
    result = await probe(target, resolver=resolver)
    return await check_dane(host, result, dane)


@pytest.mark.parametrize("spec", SPECS, ids=[s.host for s in SPECS])
async def test_every_mx_host(dnssec_world: DnssecWorld, spec: MxSpec) -> None:
    got = await _probe_and_check(
        dnssec_world, spec.host, DaneDns(dnssec_world.resolver.nameservers)
    )
    assert got.reason == spec.expect, got.detail
    assert got.match is (spec.expect == "ok")
    assert got.tlsa_present is (spec.expect not in ("no_tlsa", "bogus"))
    assert got.dnssec_secure is (spec.expect not in ("insecure", "bogus"))
    assert got.tlsa_name == f"_25._tcp.{spec.host}"
    assert got.detail


async def test_dane_ee_on_an_expired_certificate_names_the_leaf(
    dnssec_world: DnssecWorld,
) -> None:
    host = f"expired-ee.{ZONE}"
    got = await _probe_and_check(dnssec_world, host, DaneDns(dnssec_world.resolver.nameservers))
    assert got.match and got.matched_depth == 0 and got.matched is not None
    assert got.matched.text().startswith("3 1 1 ")


async def test_dane_ta_names_the_intermediate(dnssec_world: DnssecWorld) -> None:
    got = await _probe_and_check(
        dnssec_world, f"mail.{ZONE}", DaneDns(dnssec_world.resolver.nameservers)
    )
    assert got.match and got.matched_depth == 1
    assert got.reference_names == (f"mail.{ZONE}",)


async def test_dane_ta_accepts_an_extra_reference_name(dnssec_world: DnssecWorld) -> None:
    # ta-spki's leaf names mail.example.test; given as the next-hop domain, it is accepted.
    host = f"ta-spki.{ZONE}"
    resolver = DnsResolver(dnssec_world.resolver.nameservers)
    result = await probe(Target.create(host, 25, timeout=10), resolver=resolver)
    dane = DaneDns(dnssec_world.resolver.nameservers)
    assert (await check_dane(host, result, dane)).reason is DaneReason.NAME_MISMATCH
    got = await check_dane(host, result, dane, extra_names=[f"mail.{ZONE}"])
    assert got.match, got.detail


async def test_tlsa_through_a_cname(dnssec_world: DnssecWorld) -> None:
    got = await _probe_and_check(
        dnssec_world, f"alias.{ZONE}", DaneDns(dnssec_world.resolver.nameservers)
    )
    assert got.match and got.lookup is not None
    assert got.lookup.owner == f"_25._tcp.ee.{ZONE}"


async def test_a_malformed_record_is_unusable_not_a_lookup_failure(
    dnssec_world: DnssecWorld,
) -> None:
    got = await check_dane(f"malformed.{ZONE}", [b"x"], DaneDns(dnssec_world.resolver.nameservers))
    assert got.reason is DaneReason.NO_USABLE_RECORDS and got.tlsa_present and got.dnssec_secure
    assert got.lookup is not None and len(got.lookup.malformed) == 1
    assert "unreadable" in got.detail


async def test_a_large_rrset_comes_over_tcp(dnssec_world: DnssecWorld) -> None:
    host = f"big.{ZONE}"
    query = dns.message.make_query(f"_25._tcp.{host}", "TLSA", want_dnssec=True, payload=1232)
    udp = dns.query.udp(query, dnssec_world.resolver.host, port=dnssec_world.resolver.port)
    assert udp.flags & dns.flags.TC, "the RRset should not fit one UDP answer"
    got = await _probe_and_check(dnssec_world, host, DaneDns(dnssec_world.resolver.nameservers))
    assert got.match and len(got.records) == 3


async def test_unusable_records_are_named(dnssec_world: DnssecWorld) -> None:
    got = await check_dane(f"pkix.{ZONE}", [b"x"], DaneDns(dnssec_world.resolver.nameservers))
    assert got.reason is DaneReason.NO_USABLE_RECORDS
    assert [why for _, why in got.unusable] == ["pkix_usage", "pkix_usage"]
    assert got.detail.count("(pkix_usage)") == 2


async def test_no_tlsa_is_securely_denied(dnssec_world: DnssecWorld) -> None:
    got = await check_dane(f"notlsa.{ZONE}", [], DaneDns(dnssec_world.resolver.nameservers))
    assert got.reason is DaneReason.NO_TLSA and got.dnssec_secure
    assert "NXDOMAIN" in got.detail and "securely denied" in got.detail


async def test_bogus_is_told_by_extended_dns_error(dnssec_world: DnssecWorld) -> None:
    got = await check_dane(f"bogus.{ZONE}", [], DaneDns(dnssec_world.resolver.nameservers))
    assert got.reason is DaneReason.BOGUS and "EDE 6" in got.detail


async def test_bogus_without_ede_is_told_by_a_checking_disabled_query(
    dnssec_world: DnssecWorld,
) -> None:
    dane = DaneDns(dnssec_world.resolver_no_ede.nameservers)
    got = await check_dane(f"bogus.{ZONE}", [], dane)
    assert got.reason is DaneReason.BOGUS and "EDE" not in got.detail
    assert "checking disabled" in got.detail
    # Without that second query, a SERVFAIL is all there is to say.
    plain = DaneDns(dnssec_world.resolver_no_ede.nameservers, cd_retry=False)
    assert (await check_dane(f"bogus.{ZONE}", [], plain)).reason is DaneReason.SERVFAIL


@pytest.mark.parametrize("which", ["resolver", "resolver_no_ede"])
async def test_servfail_that_is_not_dnssec(dnssec_world: DnssecWorld, which: str) -> None:
    resolver = getattr(dnssec_world, which)
    got = await check_dane(f"mx.{LAME}", [], DaneDns(resolver.nameservers))
    assert got.reason is DaneReason.SERVFAIL, got.detail
    assert not got.tlsa_present and not got.dnssec_secure


async def test_nothing_outside_the_test_zones_resolves(dnssec_world: DnssecWorld) -> None:
    query = dns.message.make_query("example.com", "A")
    response = dns.query.udp(query, dnssec_world.resolver.host, port=dnssec_world.resolver.port)
    assert response.rcode() == dns.rcode.REFUSED
    got = await check_dane("mx.example.com", [], DaneDns(dnssec_world.resolver.nameservers))
    assert got.reason is DaneReason.DNS_ERROR and "REFUSED" in got.detail


async def test_a_non_validating_server_makes_everything_insecure(
    dnssec_world: DnssecWorld,
) -> None:
    # NSD answers for the signed zone but validates nothing, so it never sets AD: the AD bit is
    # the resolver's verdict, and only a validating resolver is worth configuring.
    got = await check_dane(f"ee.{ZONE}", [], DaneDns(dnssec_world.authoritative.nameservers))
    assert got.reason is DaneReason.INSECURE and got.tlsa_present and not got.dnssec_secure


async def test_insecure_records_say_what_they_would_have_given(dnssec_world: DnssecWorld) -> None:
    host = f"mx.{CHILD}"
    got = await _probe_and_check(dnssec_world, host, DaneDns(dnssec_world.resolver.nameservers))
    assert got.reason is DaneReason.INSECURE and not got.match
    assert "if they were secure: ok" in got.detail


async def test_no_certificate_says_why(dnssec_world: DnssecWorld) -> None:
    host = f"nostarttls.{ZONE}"
    got = await _probe_and_check(dnssec_world, host, DaneDns(dnssec_world.resolver.nameservers))
    assert got.reason is DaneReason.NO_CERTIFICATE
    assert Reason.STARTTLS_NOT_ADVERTISED.value in got.detail


# -- name servers that misbehave ------------------------------------------------------------


@pytest.fixture
def silent_udp() -> Iterator[tuple[str, int]]:
    """A UDP port that receives and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield "127.0.0.1", sock.getsockname()[1]


@pytest.fixture
def closed_udp() -> tuple[str, int]:
    """A UDP port nobody listens on: the kernel answers port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return "127.0.0.1", sock.getsockname()[1]


async def test_timeout(silent_udp: tuple[str, int]) -> None:
    start = time.monotonic()
    got = await check_dane(f"ee.{ZONE}", [], DaneDns([silent_udp], timeout=0.5))
    assert got.reason is DaneReason.TIMEOUT and not got.tlsa_present
    assert time.monotonic() - start < 2.0


async def test_connection_refused(closed_udp: tuple[str, int]) -> None:
    got = await check_dane(f"ee.{ZONE}", [], DaneDns([closed_udp], timeout=5))
    assert got.reason is DaneReason.DNS_ERROR and "refused" in got.detail
    assert got.duration < 2.0


async def test_the_next_server_answers_when_one_is_silent(
    dnssec_world: DnssecWorld, silent_udp: tuple[str, int]
) -> None:
    servers = [silent_udp, *dnssec_world.resolver.nameservers]
    dane = DaneDns(servers, timeout=2.0)
    answer = await dane.tlsa(f"ee.{ZONE}")
    assert answer.status is LookupStatus.FOUND and answer.secure
    assert answer.server == f"127.0.0.1:{dnssec_world.resolver.port}"


async def test_a_check_can_be_cancelled(silent_udp: tuple[str, int]) -> None:
    task = asyncio.ensure_future(check_dane(f"ee.{ZONE}", [], DaneDns([silent_udp], timeout=30)))
    await asyncio.sleep(0)  # let it send its query
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
