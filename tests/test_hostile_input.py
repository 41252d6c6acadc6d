"""Hostile input: arbitrary bytes into the reply reader, malformed certificates into describe()."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import CertFacts
from exporter.smtp.reply import MAX_REPLY, ReplyError, parse_ehlo, take_reply
from exporter.tls import certs


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096))
def test_reply_reader_never_raises_anything_else(data: bytes) -> None:
    try:
        reply, used = take_reply(data)
    except ReplyError:
        return
    if reply is None:
        assert used == 0
    else:
        assert 0 < used <= len(data)
        parse_ehlo(reply)  # whatever a reply holds, reading it as EHLO must not fail


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_reply_reader_fed_in_pieces_agrees_with_one_piece(chunks: list[bytes]) -> None:
    """Bytes arriving in any split give the same first reply as all at once, or the same error."""
    whole = b"".join(chunks)
    try:
        expected = take_reply(whole)
    except ReplyError as exc:
        expected_error: type[ReplyError] | None = type(exc)
    else:
        expected_error = None
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        try:
            got = take_reply(buf)
        except ReplyError as exc:
            assert expected_error is not None and isinstance(exc, ReplyError)
            return
        if got[0] is not None:
            assert expected_error is None and got == expected
            return
    assert expected == (None, 0) or expected_error is not None


def test_reply_size_is_bounded_whatever_the_input() -> None:
    for filler in (b"250-" + b"a" * 100 + b"\r\n", b"250-\r\n"):
        data = filler * (MAX_REPLY // len(filler) + 2)
        with pytest.raises(ReplyError):
            take_reply(data)


# -- malformed certificates -----------------------------------------------------------------


def _cert(
    *,
    serial: int = 0x11223344556677,
    names: list[x509.GeneralName] | None = None,
    subject: x509.Name | None = None,
    not_after: dt.datetime | None = None,
) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd.example.test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after or dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _describe(der: bytes) -> CertFacts:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about what RFC 5280 forbids
        return certs.describe(der)


def test_negative_serial_is_described() -> None:
    serial = 0x7F11223344556677
    der = _cert(serial=serial)
    encoded = serial.to_bytes(8, "big")
    assert der.count(encoded) == 1
    negative = der.replace(encoded, b"\x80" + encoded[1:])  # the same INTEGER, sign bit set
    try:
        facts = _describe(negative)
    except certs.CertificateError:
        return  # a future cryptography refuses it outright: also a described outcome
    assert facts.serial.startswith("-")


def test_huge_san_list_is_described() -> None:
    names: list[x509.GeneralName] = [x509.DNSName(f"mx{i}.example.test") for i in range(5000)]
    facts = _describe(_cert(names=names))
    assert len(facts.sans_dns) == 5000


def test_far_future_dates() -> None:
    facts = _describe(_cert(not_after=dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)))
    assert facts.not_after == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    assert facts.days_until_expiry(0) > 2_900_000


def test_odd_name_encodings() -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "ünïcödé \u202e.example.test"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'comma, "quote" + plus\\'),
            x509.NameAttribute(NameOID.COMMON_NAME, "second CN"),
        ]
    )
    facts = _describe(_cert(subject=subject))
    assert facts.subject_cn == "ünïcödé \u202e.example.test"
    assert "comma" in facts.subject


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_der_is_a_certificate_error(data: bytes) -> None:
    with contextlib.suppress(certs.CertificateError):
        _describe(data)


def _bad_version(der: bytes) -> bytes:
    """The certificate with its version field set to 1 (v2): cryptography raises InvalidVersion,
    which is not a ValueError (found by the fuzz test below)."""
    at = der.find(b"\xa0\x03\x02\x01\x02")
    assert at > 0
    return der[: at + 4] + b"\x01" + der[at + 5 :]


def test_an_invalid_version_is_a_certificate_error() -> None:
    with pytest.raises(certs.CertificateError, match="version"):
        _describe(_bad_version(GOOD_DER))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_certificates_are_described_or_refused(data: st.DataObject) -> None:
    der = bytearray(GOOD_DER)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(der) - 1))
        der[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(certs.CertificateError):
        _describe(bytes(der))


GOOD_DER = _cert(
    names=[
        x509.DNSName("mail.example.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
)
