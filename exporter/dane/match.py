"""Matching a served certificate chain against TLSA records, as an SMTP client does (RFC 7672).

Pure functions over DER bytes. Only usages DANE-TA(2) and DANE-EE(3) count (section 3.1.3).
- DANE-EE(3) (section 3.1.1): the record matches the leaf; nothing else is checked, neither
  names, nor dates, nor who signed it.
- DANE-TA(2) (section 3.1.2): the record matches a certificate of the served chain (the trust
  anchor; servers must send it, section 3.1.2, so a bare key not in the chain is not looked for),
  the leaf chains up to it through served certificates (issuer names, signatures, CA flags), the
  certificates below the anchor are within their validity period, and the leaf names one of the
  reference identifiers (section 3.2.3, `exporter.dane.names`). The anchor's own dates are not
  checked: a trust anchor is a key and a name (RFC 5280 section 6.1.1), not a path certificate.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from exporter.dane import names
from exporter.dane.der import spki
from exporter.dane.model import ChainMatch, DaneReason, MatchingType, Selector, TlsaRecord, Usage
from exporter.dane.records import split_usable

MAX_CHAIN = 16  # served certificates looked at; more is hostile or broken

# How far a DANE-TA candidate got, best last: the verdict is the best over all records.
_PROGRESS = (
    DaneReason.MISMATCH,
    DaneReason.TA_UNVERIFIED,
    DaneReason.EXPIRED,
    DaneReason.NAME_MISMATCH,
    DaneReason.OK,
)


def selected(der: bytes, selector: int) -> bytes:
    """The bytes a record with `selector` covers. Raises DerError for selector 1 on bad DER."""
    if selector == Selector.CERT:
        return bytes(der)
    if selector == Selector.SPKI:
        return spki(der)
    raise ValueError(f"unknown selector {selector}")


def digest(data: bytes, mtype: int) -> bytes:
    """The association data for matching type `mtype` (RFC 6698 section 2.1.3)."""
    if mtype == MatchingType.FULL:
        return data
    if mtype == MatchingType.SHA256:
        return hashlib.sha256(data).digest()
    if mtype == MatchingType.SHA512:
        return hashlib.sha512(data).digest()
    raise ValueError(f"unknown matching type {mtype}")


def association(der: bytes, selector: int, mtype: int) -> bytes:
    """What a TLSA record `? selector mtype` for this certificate holds."""
    return digest(selected(der, selector), mtype)


def record_matches(record: TlsaRecord, der: bytes) -> bool:
    """Whether `record`'s data covers this certificate (usage not considered)."""
    try:
        return association(der, record.selector, record.mtype) == record.data
    except ValueError:  # DerError, unknown selector or matching type
        return False


def match_chain(
    records: Sequence[TlsaRecord],
    chain: Sequence[bytes],
    references: Sequence[str],
    now: datetime.datetime,
) -> ChainMatch:
    """Match a served chain (leaf first, DER) against a TLSA RRset for the reference names."""
    usable, _ = split_usable(records)
    if not usable:
        return ChainMatch(
            DaneReason.NO_USABLE_RECORDS, detail="no usable DANE-TA or DANE-EE record"
        )
    if not chain:
        return ChainMatch(DaneReason.NO_CERTIFICATE, detail="no certificate was served")
    chain = list(chain[:MAX_CHAIN])
    for record in usable:
        if record.usage == Usage.DANE_EE and record_matches(record, chain[0]):
            return ChainMatch(DaneReason.OK, record, 0, f"DANE-EE {short(record)} matches the leaf")
    certs = _load_all(chain)
    best = ChainMatch(DaneReason.MISMATCH, detail=_mismatch_detail(usable))
    for record in usable:
        if record.usage != Usage.DANE_TA:
            continue
        for depth, der in enumerate(chain):
            if not record_matches(record, der):
                continue
            outcome = _check_ta(record, depth, certs, references, now)
            if _PROGRESS.index(outcome.reason) > _PROGRESS.index(best.reason):
                best = outcome
            if outcome.ok:
                return outcome
    return best


def short(record: TlsaRecord) -> str:
    """`3 1 1 1a2b3c4d5e6f…`: enough to tell records apart in a log line."""
    data = record.data.hex()
    if len(data) > 12:
        data = data[:12] + "…"
    return f"{record.usage} {record.selector} {record.mtype} {data}"


def _mismatch_detail(usable: Sequence[TlsaRecord]) -> str:
    shown = ", ".join(short(r) for r in usable[:4])
    more = f" and {len(usable) - 4} more" if len(usable) > 4 else ""
    return f"no usable record ({shown}{more}) matches the served chain"


def _load_all(chain: Sequence[bytes]) -> list[x509.Certificate | None]:
    out: list[x509.Certificate | None] = []
    for der in chain:
        try:
            out.append(x509.load_der_x509_certificate(der))
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            out.append(None)
    return out


def _check_ta(
    record: TlsaRecord,
    ta: int,
    certs: Sequence[x509.Certificate | None],
    references: Sequence[str],
    now: datetime.datetime,
) -> ChainMatch:
    which = "the leaf" if ta == 0 else f"served certificate {ta}"
    head = f"DANE-TA {short(record)} matches {which}"
    path = _path(certs, ta)
    if path is None:
        return ChainMatch(
            DaneReason.TA_UNVERIFIED, record, ta, f"{head}, but the leaf does not chain up to it"
        )
    below = path[:-1] or path  # the anchor's dates are not checked, unless it is the leaf
    for index in below:
        cert = certs[index]
        assert cert is not None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            when = (
                f"expired {cert.not_valid_after_utc:%Y-%m-%d}"
                if now > cert.not_valid_after_utc
                else f"not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
            )
            name = "the leaf" if index == 0 else f"served certificate {index}"
            return ChainMatch(DaneReason.EXPIRED, record, ta, f"{head}, but {name} {when}")
    leaf = certs[0]
    assert leaf is not None
    if not names.matches_any(leaf, references):
        presented = ", ".join(names.presented_names(leaf)[:5]) or "no name"
        return ChainMatch(
            DaneReason.NAME_MISMATCH,
            record,
            ta,
            f"{head}, but the leaf names {presented}, not {' or '.join(references)}",
        )
    return ChainMatch(DaneReason.OK, record, ta, f"{head}, and the leaf chains up to it")


def _path(certs: Sequence[x509.Certificate | None], ta: int) -> list[int] | None:
    """Chain positions from the leaf (0) up to the anchor (`ta`), each issued by the next.

    Breadth-first with each certificate visited once: a hostile chain of certificates that all
    sign each other costs at most MAX_CHAIN squared signature checks."""
    if certs[0] is None or certs[ta] is None:
        return None
    if ta == 0:
        return [0]
    came_from: dict[int, int] = {0: 0}
    queue = [0]
    while queue:
        index = queue.pop(0)
        child = certs[index]
        assert child is not None
        for parent_index, parent in enumerate(certs):
            if parent is None or parent_index in came_from:
                continue
            if not _issued_by(child, parent, is_anchor=parent_index == ta):
                continue
            came_from[parent_index] = index
            if parent_index == ta:
                path = [ta]
                while path[-1] != 0:
                    path.append(came_from[path[-1]])
                return path[::-1]
            queue.append(parent_index)
    return None


def _issued_by(child: x509.Certificate, parent: x509.Certificate, *, is_anchor: bool) -> bool:
    """`parent` signed `child`, and may issue certificates. An anchor without basicConstraints
    is accepted (v1 roots); a non-anchor issuer must say CA:TRUE (RFC 5280 section 6.1.4 (k))."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    try:
        constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return is_anchor
    except ValueError:
        return False
    return constraints.ca
