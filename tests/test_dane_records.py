"""TLSA records from dnspython and text, their usability, names for DANE-TA, and SPKI cutting."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from exporter.dane import names
from exporter.dane.der import DerError, spki
from exporter.dane.model import TlsaRecord, Unusable
from exporter.dane.records import from_rdata, from_rdatas, from_text, split_usable, unusable
from tests.dane_certs import der, make_cert

SHA256 = "ab" * 32
SHA512 = "cd" * 64


def _rdata(text: str, rdtype: str = "TLSA") -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)


def test_from_rdata() -> None:
    got = from_rdata(_rdata(f"3 1 1 {SHA256}"))
    assert got == TlsaRecord(3, 1, 1, bytes.fromhex(SHA256))


def test_from_rdata_keeps_unknown_values_for_the_report() -> None:
    assert from_rdata(_rdata("255 7 9 00ff")) == TlsaRecord(255, 7, 9, b"\x00\xff")


def test_from_rdata_refuses_other_types() -> None:
    with pytest.raises(ValueError, match="not a TLSA"):
        from_rdata(_rdata("192.0.2.1", "A"))


def test_from_rdatas_skips_other_types_and_duplicates() -> None:
    rdatas = [_rdata(f"3 1 1 {SHA256}"), _rdata("192.0.2.1", "A"), _rdata(f"3 1 1 {SHA256}")]
    assert from_rdatas(rdatas) == (TlsaRecord(3, 1, 1, bytes.fromhex(SHA256)),)


def test_from_text() -> None:
    assert from_text(f"2 0 2 {SHA512}") == TlsaRecord(2, 0, 2, bytes.fromhex(SHA512))
    # Presentation form may split the hex with blanks (RFC 6698 section 2.2).
    assert from_text(f"3 1 1 {SHA256[:10]} {SHA256[10:]}").data == bytes.fromhex(SHA256)


@pytest.mark.parametrize("text", ["", "3 1", "3 1 1 zz", "300 1 1 ab", "3 1 1"])
def test_from_text_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a TLSA record"):
        from_text(text)


@pytest.mark.parametrize(
    "record, why",
    [
        (f"3 1 1 {SHA256}", None),
        (f"3 0 2 {SHA512}", None),
        (f"2 1 1 {SHA256}", None),
        ("3 1 0 3059301306072a8648ce3d020106", None),  # full SPKI: any length
        (f"0 0 1 {SHA256}", Unusable.PKIX_USAGE),
        (f"1 1 1 {SHA256}", Unusable.PKIX_USAGE),
        (f"4 1 1 {SHA256}", Unusable.UNKNOWN_USAGE),
        (f"255 1 1 {SHA256}", Unusable.UNKNOWN_USAGE),
        (f"3 2 1 {SHA256}", Unusable.UNKNOWN_SELECTOR),
        (f"3 1 3 {SHA256}", Unusable.UNKNOWN_MATCHING_TYPE),
    ],
)
def test_unusable(record: str, why: Unusable | None) -> None:
    assert unusable(from_text(record)) == why


@pytest.mark.parametrize("mtype, data", [(1, SHA512), (2, SHA256), (1, SHA256[:-2])])
def test_unusable_digest_of_the_wrong_size(mtype: int, data: str) -> None:
    # dnspython refuses such rdata outright (from text and from the wire), so these records
    # only exist as the lookup's `malformed` entries or built by hand, as here.
    assert unusable(TlsaRecord(3, 1, mtype, bytes.fromhex(data))) is Unusable.BAD_DIGEST_LENGTH
    with pytest.raises(ValueError, match="not a TLSA record"):
        from_text(f"3 1 {mtype} {data}")


def test_unusable_empty_data() -> None:
    assert unusable(TlsaRecord(3, 1, 0, b"")) is Unusable.EMPTY_DATA


def test_split_usable() -> None:
    good, bad = from_text(f"3 1 1 {SHA256}"), from_text(f"1 1 1 {SHA256}")
    assert split_usable([good, bad]) == ((good,), ((bad, Unusable.PKIX_USAGE),))


# -- names (RFC 7672 section 3.2.3) ---------------------------------------------------------


@pytest.mark.parametrize(
    "presented, reference, ok",
    [
        ("mail.example.test", "mail.example.test", True),
        ("MAIL.Example.TEST", "mail.example.test.", True),
        ("mail.example.test.", "MAIL.EXAMPLE.TEST", True),
        ("mail.example.test", "mx.example.test", False),
        ("*.example.test", "mail.example.test", True),
        ("*.example.test", "example.test", False),
        ("*.example.test", "a.mail.example.test", False),
        ("*.test", "example.test", False),  # at least two labels after the wildcard
        ("*", "mail", False),
        ("mx*.example.test", "mx1.example.test", False),  # no partial-label wildcards
        ("*.*.example.test", "a.b.example.test", False),
        ("mail.*.test", "mail.example.test", False),
        ("", "mail.example.test", False),
        ("mail.example.test", "", False),
        ("xn--bcher-kva.example.test", "XN--BCHER-KVA.example.test", True),
    ],
)
def test_name_matches(presented: str, reference: str, ok: bool) -> None:
    assert names.name_matches(presented, reference) is ok


def test_presented_names_prefer_dns_sans_over_the_common_name() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with_san = make_cert("cn.example.test", key, dns_names=["san.example.test"])
    assert names.presented_names(with_san) == ("san.example.test",)
    assert not names.matches_any(with_san, ["cn.example.test"])


def test_common_name_only_without_dns_sans() -> None:
    cert = make_cert("cn.example.test", ec.generate_private_key(ec.SECP256R1()))
    assert names.presented_names(cert) == ("cn.example.test",)
    assert names.matches_any(cert, ["cn.example.test"])


def test_reference_names_mx_first_each_once() -> None:
    got = names.reference_names("MX.Example.Test.", ["example.test", "mx.example.test", ""])
    assert got == ("mx.example.test", "example.test")


# -- SPKI cut out of the DER --------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["p256", "p384", "rsa2048", "ed25519"],
)
def test_spki_is_the_certificates_own_encoding(key: object) -> None:
    cert = make_cert("k.example.test", key, ca=True)  # type: ignore[arg-type]
    expected = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki(der(cert)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",  # indefinite length
        b"\x30\x85\x01\x02\x03\x04\x05",  # five length bytes
        b"\x31\x00",  # SET, not SEQUENCE
        b"\x30\x02\x30\x00",  # empty tbsCertificate
        b"\x30\x05\x30\x03\x02\x01",  # truncated serial
        b"\x1f\x01\x00",  # multi-byte tag
    ],
)
def test_spki_refuses_what_is_not_a_certificate(data: bytes) -> None:
    with pytest.raises(DerError):
        spki(data)
