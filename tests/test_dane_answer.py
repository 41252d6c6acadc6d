"""Reading a resolver's response to a TLSA query: CNAMEs, AD, denial, malformed records."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rrset
import pytest

from exporter.dane.exchange import MalformedResponse, parse
from exporter.dane.lookup import extended_errors, read_answer, tlsa_name
from exporter.dane.model import LookupStatus, TlsaRecord

QNAME = dns.name.from_text("_25._tcp.mx.example.test")
DIGEST = "ab" * 32


def _query() -> dns.message.QueryMessage:
    return dns.message.make_query(QNAME, "TLSA", want_dnssec=True)


def _response(
    *rrsets: tuple[str, str, str], ad: bool = True, rcode: int = dns.rcode.NOERROR
) -> dns.message.Message:
    response = dns.message.make_response(_query())
    response.set_rcode(rcode)
    if ad:
        response.flags |= dns.flags.AD
    for owner, rdtype, text in rrsets:
        rdata = dns.rdata.from_text("IN", rdtype, text)
        response.answer.append(dns.rrset.from_rdata(owner, 300, rdata))
    return response


def test_tlsa_name() -> None:
    assert tlsa_name("MX.Example.Test.") == "_25._tcp.mx.example.test"
    assert tlsa_name("mx.example.test", 587) == "_587._tcp.mx.example.test"


def test_secure_records() -> None:
    got = read_answer(_response((QNAME.to_text(), "TLSA", f"3 1 1 {DIGEST}")), QNAME, "s")
    assert got.status is LookupStatus.FOUND and got.secure
    assert got.records == (TlsaRecord(3, 1, 1, bytes.fromhex(DIGEST)),)
    assert got.owner == "_25._tcp.mx.example.test" and got.qname == got.owner


def test_insecure_records() -> None:
    got = read_answer(_response((str(QNAME), "TLSA", f"3 1 1 {DIGEST}"), ad=False), QNAME, "s")
    assert got.status is LookupStatus.FOUND and not got.secure


def test_records_through_a_cname_chain() -> None:
    # The common "TLSA CNAME" set-up: many MX hosts share one RRset.
    response = _response(
        (str(QNAME), "CNAME", "a.example.test."),
        ("a.example.test.", "CNAME", "_dane.example.test."),
        ("_dane.example.test.", "TLSA", f"2 0 1 {DIGEST}"),
    )
    got = read_answer(response, QNAME, "s")
    assert got.status is LookupStatus.FOUND and got.owner == "_dane.example.test"


def test_a_cname_loop_is_an_error() -> None:
    response = _response(
        (str(QNAME), "CNAME", "a.example.test."),
        ("a.example.test.", "CNAME", str(QNAME)),
    )
    got = read_answer(response, QNAME, "s")
    assert got.status is LookupStatus.DNS_ERROR and "CNAME chain" in got.detail


@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.NXDOMAIN])
@pytest.mark.parametrize("ad", [True, False])
def test_no_records(rcode: int, ad: bool) -> None:
    got = read_answer(_response(ad=ad, rcode=rcode), QNAME, "s")
    assert got.status is LookupStatus.NONE and got.secure is ad and not got.records


def test_records_of_another_name_are_not_ours() -> None:
    got = read_answer(_response(("_25._tcp.other.test.", "TLSA", f"3 1 1 {DIGEST}")), QNAME, "s")
    assert got.status is LookupStatus.NONE


def test_a_cname_to_nothing_is_no_records() -> None:
    response = _response((str(QNAME), "CNAME", "gone.example.test."), rcode=dns.rcode.NXDOMAIN)
    got = read_answer(response, QNAME, "s")
    assert got.status is LookupStatus.NONE and "via CNAME to gone.example.test" in got.detail


def _with_bad_digest(response: dns.message.Message) -> bytes:
    """The wire form with the first `3 1 1 <ab…>` record's matching type changed to 2."""
    wire = bytearray(response.to_wire())
    at = wire.find(b"\x03\x01\x01" + bytes.fromhex(DIGEST))
    assert at > 0
    wire[at + 2] = 2  # SHA-512 with 32 bytes of data: dnspython refuses this rdata
    return bytes(wire)


def test_a_malformed_record_alone_is_found_but_unusable() -> None:
    query = _query()
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AD
    rdata = dns.rdata.from_text("IN", "TLSA", f"3 1 1 {DIGEST}")
    response.answer.append(dns.rrset.from_rdata(QNAME, 300, rdata))
    got = read_answer(parse(_with_bad_digest(response), query), QNAME, "s")
    assert got.status is LookupStatus.FOUND and got.records == () and len(got.malformed) == 1
    assert "inconsistent" in got.malformed[0]


def test_a_malformed_record_beside_a_good_one_is_skipped() -> None:
    query = _query()
    response = dns.message.make_response(query)
    good = dns.rdata.from_text("IN", "TLSA", f"2 1 1 {'cd' * 32}")
    bad = dns.rdata.from_text("IN", "TLSA", f"3 1 1 {DIGEST}")
    response.answer.append(dns.rrset.from_rdata(QNAME, 300, good, bad))
    got = read_answer(parse(_with_bad_digest(response), query), QNAME, "s")
    assert got.records == (TlsaRecord(2, 1, 1, bytes.fromhex("cd" * 32)),)
    assert len(got.malformed) == 1


def test_parse_refuses_an_answer_to_another_query() -> None:
    other = dns.message.make_query("other.example.test", "TLSA")
    wire = dns.message.make_response(other).to_wire()
    with pytest.raises(MalformedResponse, match="does not answer"):
        parse(wire, _query())


def test_parse_refuses_garbage() -> None:
    with pytest.raises(MalformedResponse, match="unreadable"):
        parse(b"\x00\x01\x02", _query())


def test_extended_errors() -> None:
    response = _response(rcode=dns.rcode.SERVFAIL, ad=False)
    response.use_edns(0, 0, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS, "x")])
    again = dns.message.from_wire(response.to_wire())
    assert extended_errors(again) == ((6, "x"),)
