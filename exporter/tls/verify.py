"""Certificate verification apart from the handshake: chain trust, name match, and why not.

The handshake never verifies (so a broken certificate is still described); this module then asks
cryptography's X.509 verifier two separate questions, so trust and name are reported apart:
- trust: does the served chain build to the trust store at this moment? Extension checks follow
  OpenSSL's essentials (CA basicConstraints, keyCertSign), not the stricter CA/Browser Forum
  profile, because MTAs use OpenSSL and we report what they would accept.
- name: is the leaf valid for the target's server name (RFC 6125 rules as in cryptography, no
  common-name fallback, as Python's ssl module)?
When trust fails, the served chain is examined to name the likeliest cause.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import ssl
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification as xv
from cryptography.x509.oid import AuthorityInformationAccessOID

from exporter.model import Verification, VerifyReason

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


class TrustStoreError(ValueError):
    """A CA file that cannot be read or holds no certificate."""


@dataclass(frozen=True)
class TrustStore:
    source: str  # "system" or the CA file's path
    store: xv.Store | None  # None: no certificate could be loaded
    subjects: frozenset[x509.Name]
    certs: tuple[x509.Certificate, ...]


MAX_CA_FILE = 16 * 1024 * 1024  # bytes; Debian's whole bundle is about 200 KiB


def load_trust_store(ca_file: str | None) -> TrustStore:
    """The trust store for a CA file, or the system's when None. Cached until the file changes."""
    if ca_file is not None:
        try:
            st = os.stat(ca_file)
        except OSError as exc:
            raise TrustStoreError(f"CA file {ca_file}: {exc.strerror}") from exc
        except ValueError as exc:  # a NUL in the path
            raise TrustStoreError(f"CA file {ca_file!r}: {exc}") from exc
        # A device or a pipe (/dev/zero, a FIFO) would be read for ever: refused, as is a file
        # far larger than any CA bundle.
        if not stat.S_ISREG(st.st_mode):
            raise TrustStoreError(f"CA file {ca_file}: not a regular file")
        if st.st_size > MAX_CA_FILE:
            raise TrustStoreError(
                f"CA file {ca_file}: {st.st_size} bytes, more than a CA bundle ({MAX_CA_FILE})"
            )
        return _load_file(ca_file, st.st_mtime_ns, st.st_size)
    return _load_system()


@functools.lru_cache(maxsize=64)
def _load_file(path: str, _mtime_ns: int, _size: int) -> TrustStore:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CA_FILE + 1)
    except OSError as exc:
        raise TrustStoreError(f"CA file {path}: {exc.strerror}") from exc
    certs = _parse_pem_bundle(data)
    if not certs:
        raise TrustStoreError(f"CA file {path}: no PEM certificate in it")
    return _make(path, certs)


@functools.lru_cache(maxsize=1)
def _load_system() -> TrustStore:
    paths = ssl.get_default_verify_paths()
    certs: list[x509.Certificate] = []
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            with open(candidate, "rb") as fh:
                certs = _parse_pem_bundle(fh.read())
            if certs:
                break
    if not certs:
        for directory in (paths.capath, paths.openssl_capath):
            if directory and os.path.isdir(directory):
                for entry in sorted(os.listdir(directory)):
                    full = os.path.join(directory, entry)
                    if os.path.isfile(full):
                        with open(full, "rb") as fh:
                            certs.extend(_parse_pem_bundle(fh.read()))
                if certs:
                    break
    return _make("system", certs)


def _parse_pem_bundle(data: bytes) -> list[x509.Certificate]:
    # One unreadable entry in a bundle must not cost the others, so each block is loaded alone.
    certs = []
    for block in data.split(_PEM_BEGIN)[1:]:
        try:
            with warnings.catch_warnings():
                # Some distribution bundles hold roots with non-positive serials; they still work.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs.append(x509.load_pem_x509_certificate(_PEM_BEGIN + block))
        except (ValueError, x509.InvalidVersion):
            continue
    return certs


def _make(source: str, certs: list[x509.Certificate]) -> TrustStore:
    return TrustStore(
        source=source,
        store=xv.Store(certs) if certs else None,
        subjects=frozenset(c.subject for c in certs),
        certs=tuple(certs),
    )


def _require_ca(_policy: xv.Policy, _cert: x509.Certificate, ext: x509.BasicConstraints) -> None:
    if not ext.ca:
        raise ValueError("basicConstraints does not mark this certificate as a CA")


def _key_cert_sign(_policy: xv.Policy, _cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("keyUsage does not allow certificate signing")


@functools.lru_cache(maxsize=1)
def _policies() -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy, xv.ExtensionPolicy]:
    ca = (
        xv.ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, xv.Criticality.AGNOSTIC, _require_ca)
        .may_be_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, _key_cert_sign)
    )
    ee = xv.ExtensionPolicy.permit_all()
    ee_named = ee.require_present(x509.SubjectAlternativeName, xv.Criticality.AGNOSTIC, None)
    return ca, ee, ee_named


def verify(
    chain: Sequence[x509.Certificate],
    server_name: str,
    trust: TrustStore,
    now: datetime.datetime,
) -> Verification:
    """Verify a served chain (leaf first) for `server_name` against `trust` at `now`."""
    if not chain:
        detail = "no readable certificate served"
        return Verification(False, False, VerifyReason.NO_CERTIFICATE, detail, trust.source)
    leaf, intermediates = chain[0], list(chain[1:])
    name_ok = hostname_matches(leaf, server_name)
    trusted, detail = _trusted(leaf, intermediates, trust, now)
    if trusted:
        reason = VerifyReason.OK if name_ok else VerifyReason.HOSTNAME_MISMATCH
        if not name_ok:
            detail = f"certificate is not valid for {server_name}"
    else:
        reason, why = _classify(chain, trust, now)
        detail = f"{why} ({detail})" if detail else why
    return Verification(trusted, name_ok, reason, detail, trust.source)


def _trusted(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    trust: TrustStore,
    now: datetime.datetime,
) -> tuple[bool, str]:
    if trust.store is None:
        return False, f"trust store {trust.source} holds no certificate"
    ca, ee, _ = _policies()
    verifier = (
        xv.PolicyBuilder()
        .store(trust.store)
        .time(now)
        .extension_policies(ca_policy=ca, ee_policy=ee)
        .build_client_verifier()  # chain only: the name is checked apart
    )
    try:
        verifier.verify(leaf, intermediates)
    except (xv.VerificationError, ValueError, UnsupportedAlgorithm) as exc:
        return False, str(exc)
    return True, ""


def hostname_matches(leaf: x509.Certificate, server_name: str) -> bool:
    """Whether the leaf's subjectAltName covers `server_name` (a DNS name or an IP literal)."""
    subject: xv.Subject
    try:
        subject = x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        try:
            subject = x509.DNSName(server_name.rstrip(".").lower())
        except ValueError:
            return False
    ca, _, ee_named = _policies()
    # The leaf as its own trust anchor, at a moment inside its validity: only the name can fail.
    try:
        verifier = (
            xv.PolicyBuilder()
            .store(xv.Store([leaf]))
            .time(leaf.not_valid_before_utc)
            .extension_policies(ca_policy=ca, ee_policy=ee_named)
            .build_server_verifier(subject)
        )
        verifier.verify(leaf, [])
    except (xv.VerificationError, ValueError, UnsupportedAlgorithm):
        return False
    return True


def _classify(
    chain: Sequence[x509.Certificate], trust: TrustStore, now: datetime.datetime
) -> tuple[VerifyReason, str]:
    leaf = chain[0]
    for i, cert in enumerate(chain):
        which = "leaf certificate" if i == 0 else f"served chain certificate {i}"
        if cert.not_valid_after_utc < now:
            return VerifyReason.EXPIRED, f"{which} expired {cert.not_valid_after_utc:%Y-%m-%d}"
        if cert.not_valid_before_utc > now:
            return (
                VerifyReason.NOT_YET_VALID,
                f"{which} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}",
            )
    if len(chain) == 1 and leaf.issuer == leaf.subject:
        return VerifyReason.SELF_SIGNED, "self-signed certificate not in the trust store"
    top = chain[-1]
    if top.issuer == top.subject and top.subject not in trust.subjects:
        return VerifyReason.UNKNOWN_ISSUER, "the served chain ends at a root not in the trust store"
    if top.issuer not in trust.subjects and not any(c.subject == top.issuer for c in chain):
        if _has_ca_issuers(top):
            # What a missing intermediate looks like: the issuer is named, not served, not
            # trusted, and the certificate says where it could be fetched (RFC 5280 4.2.2.1).
            return (
                VerifyReason.INCOMPLETE_CHAIN,
                f"issuer {_name(top.issuer)} not served (missing intermediate?)",
            )
        return VerifyReason.UNKNOWN_ISSUER, f"issuer {_name(top.issuer)} is not trusted"
    return VerifyReason.UNTRUSTED, "the chain does not verify"


def _has_ca_issuers(cert: x509.Certificate) -> bool:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(d.access_method == AuthorityInformationAccessOID.CA_ISSUERS for d in aia)


def _name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:
        return "<unreadable name>"
