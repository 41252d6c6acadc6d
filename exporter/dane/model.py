"""Plain frozen data of a DANE check: TLSA records, the lookup's answer, the verdict and why."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Usage(enum.IntEnum):
    """TLSA certificate usage (RFC 6698 section 2.1.1, acronyms from RFC 7218)."""

    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(enum.IntEnum):
    """Which part of a certificate a record covers (RFC 6698 section 2.1.2)."""

    CERT = 0  # the whole certificate, DER
    SPKI = 1  # its SubjectPublicKeyInfo, DER


class MatchingType(enum.IntEnum):
    """How the selected bytes are compared (RFC 6698 section 2.1.3)."""

    FULL = 0
    SHA256 = 1
    SHA512 = 2


@dataclass(frozen=True)
class TlsaRecord:
    """One TLSA record as published. Fields are plain ints: unknown values must still be shown."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def text(self) -> str:
        """Presentation form, `3 1 1 ab12…` (RFC 6698 section 2.2)."""
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


class Unusable(enum.StrEnum):
    """Why a record can never authenticate an SMTP server. Such records are ignored."""

    PKIX_USAGE = "pkix_usage"  # usages 0 and 1: RFC 7672 section 3.1.3
    UNKNOWN_USAGE = "unknown_usage"
    UNKNOWN_SELECTOR = "unknown_selector"
    UNKNOWN_MATCHING_TYPE = "unknown_matching_type"
    BAD_DIGEST_LENGTH = "bad_digest_length"  # a SHA-256/512 value of the wrong size
    EMPTY_DATA = "empty_data"


class LookupStatus(enum.StrEnum):
    """What the resolver said about `_25._tcp.HOST` TLSA."""

    FOUND = "found"  # a TLSA RRset (possibly reached through CNAMEs)
    NONE = "none"  # NXDOMAIN or NODATA
    BOGUS = "bogus"  # SERVFAIL that the resolver blames on DNSSEC validation
    SERVFAIL = "servfail"  # SERVFAIL for any other reason
    DNS_ERROR = "dns_error"  # REFUSED, FORMERR, a malformed answer, a network error
    TIMEOUT = "timeout"  # no answer from any name server in time


@dataclass(frozen=True)
class TlsaAnswer:
    """The TLSA lookup's outcome, with the resolver's DNSSEC verdict (the AD bit)."""

    qname: str  # `_25._tcp.HOST`, without the final dot
    status: LookupStatus
    secure: bool  # AD set: the answer, or the proof that there is none, validated
    records: tuple[TlsaRecord, ...] = ()
    owner: str = ""  # where the records were found, after CNAMEs ("" when none)
    detail: str = ""
    server: str = ""  # the name server that answered last, host:port
    # Records of the response that could not be read and were skipped (a SHA-256 value that is
    # not 32 bytes, say): each one's error. They count as unusable TLSA records.
    malformed: tuple[str, ...] = ()


class DaneReason(enum.StrEnum):
    """The verdict of one DANE check: `ok` or why not. A closed list: docs/dane.md has each."""

    OK = "ok"
    NO_TLSA = "no_tlsa"  # no TLSA record: DANE does not apply to this host
    INSECURE = "insecure"  # TLSA records, but not DNSSEC-validated: senders ignore them
    BOGUS = "bogus"  # DNSSEC validation failed: DANE senders defer mail
    SERVFAIL = "servfail"  # the resolver could not get an answer: DANE senders defer mail
    DNS_ERROR = "dns_error"
    TIMEOUT = "timeout"
    NO_USABLE_RECORDS = "no_usable_records"  # secure records, none usable for SMTP
    NO_CERTIFICATE = "no_certificate"  # the probe got no certificate to match
    MISMATCH = "mismatch"  # no usable record matches the served chain
    TA_UNVERIFIED = "ta_unverified"  # a DANE-TA record matches a served certificate that the
    # leaf does not chain up to (signatures, issuer names, CA flags)
    EXPIRED = "expired"  # DANE-TA: a certificate below the trust anchor is out of its validity
    NAME_MISMATCH = "name_mismatch"  # DANE-TA: the leaf does not name the MX host
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class ChainMatch:
    """How a served chain fared against a TLSA RRset (pure matching, no DNS)."""

    reason: DaneReason  # ok, no_usable_records, no_certificate, mismatch, ta_unverified,
    # expired or name_mismatch
    record: TlsaRecord | None = None  # the record that matched (ok), or came closest
    depth: int | None = None  # chain position of the matched certificate (0: the leaf)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is DaneReason.OK


@dataclass(frozen=True)
class DaneResult:
    """One DANE check of one MX host: the three facts the metrics export, and why."""

    mx_host: str  # lower case, without the final dot
    tlsa_name: str  # `_25._tcp.MX_HOST`
    tlsa_present: bool  # the lookup returned TLSA records (secure or not)
    dnssec_secure: bool  # the answer (records or their absence) was DNSSEC-validated
    match: bool  # a DANE sender would authenticate this server: secure, usable, matched
    reason: DaneReason
    detail: str = ""  # for logs and reports, never a label
    records: tuple[TlsaRecord, ...] = ()
    unusable: tuple[tuple[TlsaRecord, Unusable], ...] = ()
    matched: TlsaRecord | None = None
    matched_depth: int | None = None
    reference_names: tuple[str, ...] = ()  # names a DANE-TA leaf may carry (RFC 7672 3.2.2)
    lookup: TlsaAnswer | None = None
    started_at: float = 0.0  # unix seconds
    duration: float = 0.0  # seconds
