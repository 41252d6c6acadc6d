"""Pure certificate facts from DER bytes, with cryptography's X.509 parser."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from exporter.model import CertFacts


class CertificateError(ValueError):
    """DER bytes that cryptography cannot read as a certificate."""


def describe(der: bytes) -> CertFacts:
    """Facts about one certificate. Raises CertificateError when the bytes are not one."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise CertificateError(f"unreadable certificate: {exc}") from exc
    return describe_loaded(cert, der)


def describe_loaded(cert: x509.Certificate, der: bytes) -> CertFacts:
    """Facts about a loaded certificate. Raises CertificateError on a field that cannot be read
    (cryptography parses fields lazily, so a damaged one surfaces only when it is read)."""
    try:
        return _describe(cert, der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"unreadable certificate field: {exc}") from exc


def _describe(cert: x509.Certificate, der: bytes) -> CertFacts:
    key_type, key_bits = _key(cert)
    dns, ips = _sans(cert)
    return CertFacts(
        subject=_name(cert.subject, "subject"),
        subject_cn=_cn(cert.subject),
        issuer=_name(cert.issuer, "issuer"),
        serial=_serial(cert.serial_number),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        sans_dns=dns,
        sans_ip=ips,
        key_type=key_type,
        key_bits=key_bits,
        signature_algorithm=_signature_algorithm(cert),
        self_issued=cert.issuer == cert.subject,
    )


def _serial(n: int) -> str:
    # RFC 5280 forbids negative serials, yet they are seen: show them, do not crash on them.
    return f"{n:X}" if n >= 0 else f"-{-n:X}"


def _name(name: x509.Name, what: str) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:  # odd encodings in a hostile certificate
        return f"<unreadable {what}>"


def _cn(name: x509.Name) -> str | None:
    try:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return (), ()
    dns = tuple(ext.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))
    return dns, ips


def _key(cert: x509.Certificate) -> tuple[str, int | None]:
    try:
        key = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "unknown", None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return "unknown", None


def _signature_algorithm(cert: x509.Certificate) -> str:
    try:
        oid = cert.signature_algorithm_oid
    except ValueError:
        return "unknown"
    name = getattr(oid, "_name", None)
    return name if isinstance(name, str) and name != "Unknown OID" else oid.dotted_string
