"""TLSA records from dnspython rdata or text, and whether each can serve SMTP (RFC 7672 3.1.3)."""

from __future__ import annotations

from collections.abc import Iterable

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.TLSA import TLSA

from exporter.dane.model import MatchingType, Selector, TlsaRecord, Unusable, Usage

DIGEST_SIZES = {MatchingType.SHA256: 32, MatchingType.SHA512: 64}


def from_rdata(rdata: dns.rdata.Rdata) -> TlsaRecord:
    """A TlsaRecord from a dnspython TLSA rdata. Raises ValueError for any other type."""
    if not isinstance(rdata, TLSA):
        raise ValueError(f"not a TLSA rdata: {type(rdata).__name__}")
    return TlsaRecord(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))


def from_rdatas(rdatas: Iterable[dns.rdata.Rdata]) -> tuple[TlsaRecord, ...]:
    """Every TLSA rdata of an answer, in order, duplicates dropped; other types are skipped."""
    out: dict[TlsaRecord, None] = {}
    for rdata in rdatas:
        if isinstance(rdata, TLSA):
            out.setdefault(from_rdata(rdata), None)
    return tuple(out)


def from_text(text: str) -> TlsaRecord:
    """`3 1 1 <hex>` (RFC 6698 section 2.2). Raises ValueError with the reason."""
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, text)
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"not a TLSA record: {text!r} ({exc})") from exc
    return from_rdata(rdata)


def unusable(record: TlsaRecord) -> Unusable | None:
    """Why `record` cannot authenticate an SMTP server, or None when it can.

    RFC 7672 section 3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (no common set of
    trusted CAs between MTAs). Unknown parameters are unusable (RFC 6698 section 4.1, RFC 7671
    section 5). A digest of the wrong length can never match, so it is unusable too.
    """
    if record.usage in (Usage.PKIX_TA, Usage.PKIX_EE):
        return Unusable.PKIX_USAGE
    if record.usage not in (Usage.DANE_TA, Usage.DANE_EE):
        return Unusable.UNKNOWN_USAGE
    if record.selector not in (Selector.CERT, Selector.SPKI):
        return Unusable.UNKNOWN_SELECTOR
    if record.mtype not in (MatchingType.FULL, MatchingType.SHA256, MatchingType.SHA512):
        return Unusable.UNKNOWN_MATCHING_TYPE
    if not record.data:
        return Unusable.EMPTY_DATA
    size = DIGEST_SIZES.get(MatchingType(record.mtype))
    if size is not None and len(record.data) != size:
        return Unusable.BAD_DIGEST_LENGTH
    return None


def split_usable(
    records: Iterable[TlsaRecord],
) -> tuple[tuple[TlsaRecord, ...], tuple[tuple[TlsaRecord, Unusable], ...]]:
    """The usable records, and the others with why they are not."""
    good: list[TlsaRecord] = []
    bad: list[tuple[TlsaRecord, Unusable]] = []
    for record in records:
        why = unusable(record)
        if why is None:
            good.append(record)
        else:
            bad.append((record, why))
    return tuple(good), tuple(bad)
