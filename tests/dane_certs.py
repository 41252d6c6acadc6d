"""Certificates for the DANE matching tests: a PKI from tests.fixtures.certs, and odd chains."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from exporter.dane.match import association
from exporter.dane.model import TlsaRecord
from tests.fixtures.certs import TestPKI

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def record(usage: int, selector: int, mtype: int, cert_der: bytes) -> TlsaRecord:
    """The record `usage selector mtype` that covers this certificate."""
    return TlsaRecord(usage, selector, mtype, association(cert_der, selector, mtype))


def make_cert(
    subject: str,
    key: PrivateKey,
    *,
    issuer: str | None = None,
    issuer_key: PrivateKey | None = None,
    ca: bool | None = None,
    dns_names: Sequence[str] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate with only the parts a test needs; `ca=None` leaves basicConstraints out."""
    now = dt.datetime.now(dt.UTC)
    signer = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), False
        )
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, algorithm)


__all__ = ["TestPKI", "der", "make_cert", "record"]
