"""Hostile input for the DANE code: arbitrary bytes as certificates, records and responses."""

from __future__ import annotations

import datetime as dt

import dns.message
import dns.rdata
import dns.rrset
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.dane.der import DerError, spki
from exporter.dane.exchange import MalformedResponse, parse
from exporter.dane.lookup import read_answer
from exporter.dane.match import match_chain
from exporter.dane.model import DaneReason, TlsaRecord
from exporter.dane.records import from_rdatas, from_text, unusable
from tests.dane_certs import TestPKI, der, make_cert, record

NOW = dt.datetime.now(dt.UTC)
PKI = TestPKI()
LEAF = der(PKI.leaf().cert)
INTER = der(PKI.intermediate.cert)
KEYS = (
    ec.generate_private_key(ec.SECP256R1()),
    rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ed25519.Ed25519PrivateKey.generate(),
)
MATCH_REASONS = {
    DaneReason.OK,
    DaneReason.NO_USABLE_RECORDS,
    DaneReason.NO_CERTIFICATE,
    DaneReason.MISMATCH,
    DaneReason.TA_UNVERIFIED,
    DaneReason.EXPIRED,
    DaneReason.NAME_MISMATCH,
}

records = st.builds(
    TlsaRecord,
    usage=st.integers(0, 255),
    selector=st.integers(0, 255),
    mtype=st.integers(0, 255),
    data=st.binary(max_size=80),
)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for where, value in edits:
        out[where % len(out)] = value
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_spki_of_arbitrary_bytes(data: bytes) -> None:
    try:
        got = spki(data)
    except DerError:
        return
    assert got in data and got[:1] == b"\x30"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_spki_of_damaged_certificates(edits: list[tuple[int, int]]) -> None:
    damaged = _mutate(LEAF, edits)
    try:
        got = spki(damaged)
    except DerError:
        return
    assert got in damaged


@settings(max_examples=30, deadline=None)
@given(
    key_index=st.integers(0, len(KEYS) - 1),
    name=st.from_regex(r"[a-z]{1,20}\.example\.test", fullmatch=True),
    ca=st.sampled_from([None, True, False]),
)
def test_spki_equals_the_libraries_encoding(key_index: int, name: str, ca: bool | None) -> None:
    key = KEYS[key_index]
    cert = make_cert(name, key, ca=ca, dns_names=[name])
    expected = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki(der(cert)) == expected
    assert match_chain([record(3, 1, 1, der(cert))], [der(cert)], [name], NOW).ok


@settings(max_examples=300, deadline=None)
@given(
    st.lists(records, max_size=6),
    st.lists(st.binary(max_size=600), max_size=5),
    st.lists(st.text(max_size=30), max_size=3),
)
def test_match_chain_of_arbitrary_input(
    recs: list[TlsaRecord], chain: list[bytes], names: list[str]
) -> None:
    got = match_chain(recs, chain, names, NOW)
    assert got.reason in MATCH_REASONS
    assert got.detail


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    st.sampled_from([(2, 0, 1), (2, 1, 1), (3, 0, 1), (3, 1, 2)]),
    st.booleans(),
)
def test_match_chain_of_damaged_certificates(
    edits: list[tuple[int, int]], params: tuple[int, int, int], damage_leaf: bool
) -> None:
    usage, selector, mtype = params
    target = LEAF if usage == 3 else INTER
    rec = record(usage, selector, mtype, target)
    chain = [_mutate(LEAF, edits), INTER] if damage_leaf else [LEAF, _mutate(INTER, edits)]
    got = match_chain([rec], chain, ["mail.example.test"], NOW)
    assert got.reason in MATCH_REASONS
    if chain == [LEAF, INTER]:  # the edits changed nothing
        assert got.ok


QUERY = dns.message.make_query("_25._tcp.mx.example.test", "TLSA", want_dnssec=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_parse_arbitrary_bytes(data: bytes) -> None:
    wire = QUERY.id.to_bytes(2, "big") + data  # our id, so the content is what is tested
    try:
        response = parse(wire, QUERY)
    except MalformedResponse:
        return
    read_answer(response, QUERY.question[0].name, "s")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_parse_damaged_responses(edits: list[tuple[int, int]]) -> None:
    response = dns.message.make_response(QUERY)
    for text in (f"3 1 1 {'ab' * 32}", f"2 0 2 {'cd' * 64}"):
        response.answer.append(dns.rrset.from_text(QUERY.question[0].name, 300, "IN", "TLSA", text))
    wire = _mutate(response.to_wire(), [(2 + w % 10**6, v) for w, v in edits])
    try:
        parsed = parse(wire, QUERY)
    except MalformedResponse:
        return
    got = read_answer(parsed, QUERY.question[0].name, "s")
    assert got.qname == "_25._tcp.mx.example.test"


@st.composite
def _publishable(draw: st.DrawFn) -> TlsaRecord:
    """A record dnspython accepts: any parameters, digests of the size their type says."""
    mtype = draw(st.integers(0, 255))
    size = {1: 32, 2: 64}.get(mtype)
    data = draw(st.binary(min_size=size or 1, max_size=size or 300))
    return TlsaRecord(draw(st.integers(0, 255)), draw(st.integers(0, 255)), mtype, data)


@settings(max_examples=300, deadline=None)
@given(st.lists(_publishable(), min_size=1, max_size=5))
def test_records_survive_text_and_wire(recs: list[TlsaRecord]) -> None:
    """Presentation form and wire form give back the same records, and usability is decided
    for each without error."""
    for rec in recs:
        assert from_text(rec.text()) == rec
        unusable(rec)
    response = dns.message.make_response(QUERY)
    rdatas = [dns.rdata.from_text("IN", "TLSA", r.text()) for r in recs]
    response.answer.append(dns.rrset.from_rdata_list(QUERY.question[0].name, 300, rdatas))
    parsed = parse(response.to_wire(), QUERY)
    assert set(from_rdatas(parsed.answer[0])) == set(recs)
