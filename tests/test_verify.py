"""Certificate facts and verification, table-tested over certificates the test makes."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exporter.model import Mode, Target, VerifyReason
from exporter.probe import probe
from exporter.tls import certs
from exporter.tls.verify import TrustStore, TrustStoreError, load_trust_store, verify
from tests.fixtures.certs import Issued, TestPKI
from tests.scripted import serve, smtp_session

NOW = dt.datetime.now(dt.UTC)
NAME = "mail.example.test"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def other_pki() -> TestPKI:
    """A second PKI whose CAs carry the very same names as the first one's."""
    return TestPKI()


@pytest.fixture(scope="module")
def trust(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> TrustStore:
    path = tmp_path_factory.mktemp("trust") / "ca.pem"
    return load_trust_store(str(pki.write_ca_bundle(path)))


def served(issued: Issued, *, with_chain: bool = True) -> list[x509.Certificate]:
    return [issued.cert, *(issued.chain if with_chain else ())]


def _trustme_chain_with_root() -> tuple[list[x509.Certificate], str]:
    ca = trustme.CA()
    leaf = ca.issue_cert(NAME)
    pems = [blob.bytes() for blob in leaf.cert_chain_pems] + [ca.cert_pem.bytes()]
    return [x509.load_pem_x509_certificate(pem) for pem in pems], NAME


Case = Callable[[TestPKI, TestPKI], tuple[list[x509.Certificate], str]]

CASES: list[tuple[str, Case, bool, bool, VerifyReason]] = [
    ("good", lambda p, o: (served(p.leaf()), NAME), True, True, VerifyReason.OK),
    (
        "name case",
        lambda p, o: (served(p.leaf()), "MAIL.Example.TEST"),
        True,
        True,
        VerifyReason.OK,
    ),
    ("trailing dot", lambda p, o: (served(p.leaf()), NAME + "."), True, True, VerifyReason.OK),
    (
        "wildcard",
        lambda p, o: (served(p.leaf(["*.example.test"])), "mx1.example.test"),
        True,
        True,
        VerifyReason.OK,
    ),
    (
        "wildcard covers one label only",
        lambda p, o: (served(p.leaf(["*.example.test"])), "a.b.example.test"),
        True,
        False,
        VerifyReason.HOSTNAME_MISMATCH,
    ),
    (
        "ip address",
        lambda p, o: (served(p.leaf([NAME], ["127.0.0.1"])), "127.0.0.1"),
        True,
        True,
        VerifyReason.OK,
    ),
    (
        "wrong name",
        lambda p, o: (served(p.leaf(["wrong.example.test"])), NAME),
        True,
        False,
        VerifyReason.HOSTNAME_MISMATCH,
    ),
    (
        "expired",
        lambda p, o: (
            served(p.leaf(not_before=NOW - dt.timedelta(400), not_after=NOW - dt.timedelta(10))),
            NAME,
        ),
        False,
        True,
        VerifyReason.EXPIRED,
    ),
    (
        "not yet valid",
        lambda p, o: (
            served(p.leaf(not_before=NOW + dt.timedelta(2), not_after=NOW + dt.timedelta(90))),
            NAME,
        ),
        False,
        True,
        VerifyReason.NOT_YET_VALID,
    ),
    (
        "self-signed",
        lambda p, o: (served(p.self_signed_leaf()), NAME),
        False,
        True,
        VerifyReason.SELF_SIGNED,
    ),
    (
        "intermediate missing, AIA present",
        lambda p, o: (
            served(p.leaf(ca_issuers_uri="http://ca.test/i.der"), with_chain=False),
            NAME,
        ),
        False,
        True,
        VerifyReason.INCOMPLETE_CHAIN,
    ),
    (
        "intermediate missing, no AIA",
        lambda p, o: (served(p.leaf(), with_chain=False), NAME),
        False,
        True,
        VerifyReason.UNKNOWN_ISSUER,
    ),
    (
        "served chain ends at an untrusted root",
        lambda p, o: _trustme_chain_with_root(),
        False,
        True,
        VerifyReason.UNKNOWN_ISSUER,
    ),
    (
        "issuer named like a trusted CA, signed by another key",
        lambda p, o: (served(o.leaf()), NAME),
        False,
        True,
        VerifyReason.UNTRUSTED,
    ),
    ("nothing served", lambda p, o: ([], NAME), False, False, VerifyReason.NO_CERTIFICATE),
]


@pytest.mark.parametrize(
    ("case", "trusted", "match", "reason"),
    [pytest.param(c, t, m, r, id=name) for name, c, t, m, r in CASES],
)
def test_verify(
    pki: TestPKI,
    other_pki: TestPKI,
    trust: TrustStore,
    case: Case,
    trusted: bool,
    match: bool,
    reason: VerifyReason,
) -> None:
    chain, server_name = case(pki, other_pki)
    outcome = verify(chain, server_name, trust, NOW)
    assert (outcome.trusted, outcome.hostname_match, outcome.reason) == (trusted, match, reason), (
        outcome.detail
    )
    assert outcome.trust_store == trust.source


def test_expired_intermediate_is_named(pki: TestPKI, trust: TrustStore) -> None:
    later = NOW + dt.timedelta(days=365 * 6)  # the intermediate lives five years, the root ten
    leaf = pki.leaf(not_after=later + dt.timedelta(days=30))
    outcome = verify(served(leaf), NAME, trust, later)
    assert outcome.reason is VerifyReason.EXPIRED
    assert "chain certificate 1" in outcome.detail


def test_pinned_self_signed_certificate_is_trusted(pki: TestPKI, tmp_path: Path) -> None:
    leaf = pki.self_signed_leaf()
    pin = tmp_path / "pin.pem"
    pin.write_bytes(leaf.cert_pem())
    assert verify(served(leaf), NAME, load_trust_store(str(pin)), NOW).reason is VerifyReason.OK


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        (b"", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "no PEM"),
    ],
)
def test_bad_ca_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrustStoreError, match=message):
        load_trust_store(str(path))


def test_system_store_loads() -> None:
    system = load_trust_store(None)
    assert system.source == "system"
    assert system.store is not None and len(system.certs) > 10


def test_certificate_facts(pki: TestPKI) -> None:
    leaf = pki.leaf([NAME, "smtp.example.test"], ["127.0.0.1"])
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    facts = certs.describe(der)
    assert facts.subject_cn == NAME
    assert facts.sans_dns == (NAME, "smtp.example.test")
    assert facts.sans_ip == ("127.0.0.1",)
    assert facts.issuer == pki.intermediate.cert.subject.rfc4514_string()
    assert facts.not_after == leaf.cert.not_valid_after_utc.timestamp()
    assert facts.key_type == "EC" and facts.key_bits == 256
    assert facts.signature_algorithm == "ecdsa-with-SHA256"
    assert int(facts.serial, 16) == leaf.cert.serial_number
    assert len(facts.fingerprint_sha256) == 64
    assert not facts.self_issued
    now = NOW.timestamp()
    assert facts.days_until_expiry(now) == pytest.approx((leaf.not_after - now) / 86400)


def test_garbage_der_is_a_certificate_error() -> None:
    with pytest.raises(certs.CertificateError):
        certs.describe(b"\x30\x03\x02\x01\x00")


async def test_served_chain_on_a_live_connection(pki: TestPKI, tmp_path: Path) -> None:
    """The whole served chain is read, leaf then intermediate, in the order served."""
    leaf = pki.leaf([NAME], ["127.0.0.1"])
    cert_path, key_path = leaf.write(tmp_path, "leaf")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    ca = pki.write_ca_bundle(tmp_path / "ca.pem")

    async def implicit(r, w):  # type: ignore[no-untyped-def]
        await w.start_tls(ctx)
        await smtp_session(r, w, None)

    async with serve(implicit) as (host, port):
        target = Target.create(
            host, port, mode=Mode.IMPLICIT_TLS, ca_file=str(ca), ehlo_name="p.test"
        )
        result = await probe(target)
    assert result.success, result.failure
    assert [c.subject for c in result.chain] == [
        leaf.cert.subject.rfc4514_string(),
        pki.intermediate.cert.subject.rfc4514_string(),
    ]
    assert result.chain_earliest_not_after == leaf.not_after
