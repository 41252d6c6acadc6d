"""DANE chain matching (RFC 7672): usages 2 and 3, selectors 0 and 1, matching types 0, 1, 2."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from exporter.dane.match import match_chain, record_matches
from exporter.dane.model import DaneReason, TlsaRecord
from tests.dane_certs import TestPKI, der, make_cert, record

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
MX = "mail.example.test"

PKI = TestPKI()
OTHER = TestPKI()
LEAF = der(PKI.leaf(dns_names=[MX]).cert)
WILD_LEAF = der(PKI.leaf(dns_names=["*.example.test"]).cert)
INTER = der(PKI.intermediate.cert)
ROOT = der(PKI.root.cert)
EXPIRED_LEAF = der(PKI.leaf(dns_names=[MX], not_before=NOW - 90 * DAY, not_after=NOW - DAY).cert)
FUTURE_LEAF = der(PKI.leaf(dns_names=[MX], not_before=NOW + DAY, not_after=NOW + 90 * DAY).cert)
WRONG_NAME_LEAF = der(PKI.leaf(dns_names=["other.example.test"]).cert)
SELF_SIGNED = der(PKI.self_signed_leaf(dns_names=[MX]).cert)
FOREIGN_LEAF = der(OTHER.leaf(dns_names=[MX]).cert)


def _no_ca_flag_chain() -> tuple[bytes, bytes, bytes]:
    """leaf <- issuer without basicConstraints <- root: the middle one may not issue."""
    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = make_cert("No-BC Root", root_key, ca=True)
    mid = make_cert("No-BC Mid", mid_key, issuer="No-BC Root", issuer_key=root_key, ca=None)
    leaf = make_cert(MX, leaf_key, issuer="No-BC Mid", issuer_key=mid_key, dns_names=[MX])
    return der(leaf), der(mid), der(root)


NOBC_LEAF, NOBC_MID, NOBC_ROOT = _no_ca_flag_chain()


def _v1_anchor_chain() -> tuple[bytes, bytes]:
    """leaf <- an anchor without any extension (a v1-style root)."""
    ta_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ta = make_cert("Bare Anchor", ta_key, ca=None)
    leaf = make_cert(MX, leaf_key, issuer="Bare Anchor", issuer_key=ta_key, dns_names=[MX])
    return der(leaf), der(ta)


V1_LEAF, V1_TA = _v1_anchor_chain()


def _bad_version(der: bytes) -> bytes:
    """Version field 1 (v2): cryptography raises InvalidVersion, which is not a ValueError."""
    at = der.find(b"\xa0\x03\x02\x01\x02")
    return der[: at + 4] + b"\x01" + der[at + 5 :]


@dataclass(frozen=True)
class Case:
    id: str
    records: tuple[TlsaRecord, ...]
    chain: tuple[bytes, ...]
    reason: DaneReason
    depth: int | None = None
    names: tuple[str, ...] = (MX,)
    matched: int | None = field(default=None)  # index into records of the expected match


CASES = [
    Case("3 1 1 leaf", (record(3, 1, 1, LEAF),), (LEAF, INTER), DaneReason.OK, 0, matched=0),
    Case("3 1 1 leaf alone", (record(3, 1, 1, LEAF),), (LEAF,), DaneReason.OK, 0, matched=0),
    Case(
        "3 1 1 of the intermediate: DANE-EE looks at the leaf only",
        (record(3, 1, 1, INTER),),
        (LEAF, INTER),
        DaneReason.MISMATCH,
    ),
    Case(
        "DANE-EE ignores expiry (RFC 7672 3.1.1)",
        (record(3, 1, 1, EXPIRED_LEAF),),
        (EXPIRED_LEAF, INTER),
        DaneReason.OK,
        0,
        matched=0,
    ),
    Case(
        "DANE-EE ignores names",
        (record(3, 0, 1, WRONG_NAME_LEAF),),
        (WRONG_NAME_LEAF, INTER),
        DaneReason.OK,
        0,
        matched=0,
    ),
    Case(
        "DANE-EE takes a self-signed leaf",
        (record(3, 1, 1, SELF_SIGNED),),
        (SELF_SIGNED,),
        DaneReason.OK,
        0,
        matched=0,
    ),
    Case(
        "2 0 1 intermediate",
        (record(2, 0, 1, INTER),),
        (LEAF, INTER),
        DaneReason.OK,
        1,
        matched=0,
    ),
    Case(
        "2 1 1 root, served",
        (record(2, 1, 1, ROOT),),
        (LEAF, INTER, ROOT),
        DaneReason.OK,
        2,
        matched=0,
    ),
    Case(
        "2 0 1 root, served out of order",
        (record(2, 0, 1, ROOT),),
        (LEAF, ROOT, INTER),
        DaneReason.OK,
        1,
        matched=0,
    ),
    Case(
        "2 0 1 root, not served: the anchor must be in the chain (RFC 7672 3.1.2)",
        (record(2, 0, 1, ROOT),),
        (LEAF, INTER),
        DaneReason.MISMATCH,
    ),
    Case(
        "DANE-TA checks names",
        (record(2, 0, 1, INTER),),
        (WRONG_NAME_LEAF, INTER),
        DaneReason.NAME_MISMATCH,
        1,
    ),
    Case(
        "DANE-TA with an extra reference name (next-hop domain)",
        (record(2, 0, 1, INTER),),
        (WRONG_NAME_LEAF, INTER),
        DaneReason.OK,
        1,
        names=(MX, "other.example.test"),
        matched=0,
    ),
    Case(
        "DANE-TA: a wildcard covers one label",
        (record(2, 0, 1, INTER),),
        (WILD_LEAF, INTER),
        DaneReason.OK,
        1,
        matched=0,
    ),
    Case(
        "DANE-TA: a wildcard does not cover two labels",
        (record(2, 0, 1, INTER),),
        (WILD_LEAF, INTER),
        DaneReason.NAME_MISMATCH,
        1,
        names=("a.mail.example.test",),
    ),
    Case(
        "DANE-TA checks the leaf's expiry",
        (record(2, 0, 1, INTER),),
        (EXPIRED_LEAF, INTER),
        DaneReason.EXPIRED,
        1,
    ),
    Case(
        "DANE-TA checks notBefore too",
        (record(2, 1, 2, INTER),),
        (FUTURE_LEAF, INTER),
        DaneReason.EXPIRED,
        1,
    ),
    Case(
        "DANE-TA: the leaf must chain up to the anchor",
        (record(2, 0, 1, INTER),),
        (FOREIGN_LEAF, INTER),
        DaneReason.TA_UNVERIFIED,
        1,
    ),
    Case(
        "DANE-TA: an issuer between leaf and anchor must be a CA",
        (record(2, 0, 1, NOBC_ROOT),),
        (NOBC_LEAF, NOBC_MID, NOBC_ROOT),
        DaneReason.TA_UNVERIFIED,
        2,
    ),
    Case(
        "DANE-TA: the anchor itself may lack basicConstraints",
        (record(2, 0, 1, NOBC_MID),),
        (NOBC_LEAF, NOBC_MID, NOBC_ROOT),
        DaneReason.OK,
        1,
        matched=0,
    ),
    Case(
        "DANE-TA: a v1-style anchor without extensions",
        (record(2, 1, 1, V1_TA),),
        (V1_LEAF, V1_TA),
        DaneReason.OK,
        1,
        matched=0,
    ),
    Case(
        "DANE-TA matching the leaf itself: names still count",
        (record(2, 0, 1, SELF_SIGNED),),
        (SELF_SIGNED,),
        DaneReason.OK,
        0,
        matched=0,
    ),
    Case(
        "PKIX usages are unusable for SMTP (RFC 7672 3.1.3)",
        (record(0, 0, 1, INTER), record(1, 1, 1, LEAF)),
        (LEAF, INTER),
        DaneReason.NO_USABLE_RECORDS,
    ),
    Case(
        "unusable records first, then a missing chain",
        (record(1, 1, 1, LEAF),),
        (),
        DaneReason.NO_USABLE_RECORDS,
    ),
    Case("no chain", (record(3, 1, 1, LEAF),), (), DaneReason.NO_CERTIFICATE),
    Case(
        "a SHA-256 value of the wrong length is unusable",
        (TlsaRecord(3, 1, 1, record(3, 1, 1, LEAF).data[:31]),),
        (LEAF, INTER),
        DaneReason.NO_USABLE_RECORDS,
    ),
    Case(
        "one good record among bad ones",
        (record(3, 1, 1, FOREIGN_LEAF), record(1, 1, 1, LEAF), record(2, 0, 2, INTER)),
        (LEAF, INTER),
        DaneReason.OK,
        1,
        matched=2,
    ),
    Case(
        "the closest failure is reported",
        (record(3, 1, 1, FOREIGN_LEAF), record(2, 0, 1, INTER)),
        (WRONG_NAME_LEAF, INTER),
        DaneReason.NAME_MISMATCH,
        1,
    ),
    Case(
        "an unreadable certificate in the chain is skipped",
        (record(2, 0, 1, INTER),),
        (LEAF, b"\x30\x03\x02\x01\x00", INTER),
        DaneReason.OK,
        2,
        matched=0,
    ),
    Case(
        "a certificate cryptography refuses (invalid version) is skipped too",
        (record(2, 0, 1, _bad_version(INTER)),),
        (LEAF, _bad_version(INTER)),
        DaneReason.TA_UNVERIFIED,
        1,
    ),
    Case(
        "an unreadable leaf still matches DANE-EE 3 0 x on its bytes",
        (record(3, 0, 1, b"not a certificate"),),
        (b"not a certificate",),
        DaneReason.OK,
        0,
        matched=0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_match_chain(case: Case) -> None:
    got = match_chain(case.records, case.chain, case.names, NOW)
    assert got.reason is case.reason, got.detail
    assert got.ok is (case.reason is DaneReason.OK)
    if case.depth is not None:
        assert got.depth == case.depth
    if case.matched is not None:
        assert got.record == case.records[case.matched]
    assert got.detail


@pytest.mark.parametrize(
    "usage, cert, chain", [(3, LEAF, (LEAF, INTER)), (2, INTER, (LEAF, INTER))]
)
@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_every_selector_and_matching_type(
    usage: int, cert: bytes, chain: tuple[bytes, ...], selector: int, mtype: int
) -> None:
    good = record(usage, selector, mtype, cert)
    assert match_chain([good], chain, [MX], NOW).ok
    # One bit off in the data: no match.
    flipped = TlsaRecord(usage, selector, mtype, bytes([good.data[0] ^ 1]) + good.data[1:])
    assert match_chain([flipped], chain, [MX], NOW).reason is DaneReason.MISMATCH


def test_record_text_matches_what_openssl_style_tools_print() -> None:
    r = TlsaRecord(3, 1, 1, bytes.fromhex("ab" * 32))
    assert r.text() == "3 1 1 " + "ab" * 32


def test_selector_one_spki_is_not_the_whole_certificate() -> None:
    spki_full = record(3, 1, 0, LEAF)
    cert_full = record(3, 0, 0, LEAF)
    assert spki_full.data != cert_full.data and spki_full.data in LEAF
    assert record_matches(spki_full, LEAF) and record_matches(cert_full, LEAF)
    # A certificate record covers that one certificate: another leaf does not match it.
    assert not record_matches(cert_full, der(PKI.leaf(dns_names=[MX]).cert))
