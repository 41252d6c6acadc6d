"""Plain frozen data of a domain check: MX set, MTA-STS and TLS-RPT findings, per-MX verdicts."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from exporter.model import ProbeResult


class CheckReason(enum.StrEnum):
    """Why an MTA-STS or TLS-RPT check failed. A closed list: docs/domains.md describes each."""

    NO_RECORD = "no_record"
    MULTIPLE_RECORDS = "multiple_records"
    BAD_RECORD = "bad_record"
    DNS_ERROR = "dns_error"
    CONNECTION_ERROR = "connection_error"
    TLS_ERROR = "tls_error"
    HTTP_STATUS = "http_status"
    REDIRECT = "redirect"
    CONTENT_TYPE = "content_type"
    TOO_LARGE = "too_large"
    PARSE_ERROR = "parse_error"
    TIMEOUT = "timeout"


class CheckError(Exception):
    """A check step failed for `reason`; `detail` is for people (logs, reports), never a label."""

    def __init__(self, reason: CheckReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CheckFailure:
    reason: CheckReason
    detail: str = ""


class StsMode(enum.StrEnum):
    """The policy's `mode` (RFC 8461 section 5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class StsState(enum.StrEnum):
    """What a domain's MTA-STS amounts to: the policy's mode, or why there is none."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"
    ABSENT = "absent"  # no `_mta-sts` record that starts with v=STSv1
    INVALID = "invalid"  # a record, but it, or the policy it announces, is unusable


@dataclass(frozen=True)
class StsRecord:
    """A valid `_mta-sts` TXT record (RFC 8461 section 3.1)."""

    id: str
    text: str  # the record as published, its strings joined
    extensions: tuple[tuple[str, str], ...] = ()  # fields other than v and id, ignored


@dataclass(frozen=True)
class InvalidPattern:
    """An `mx` value that senders must skip: an IP literal (Zuplu/postfix-tlspol #70) or no name."""

    pattern: str
    why: str


@dataclass(frozen=True)
class Policy:
    """A valid MTA-STS policy (RFC 8461 section 3.2)."""

    mode: StsMode
    max_age: int  # seconds, 0..31557600
    mx: tuple[str, ...]  # the valid patterns, lower case, without a trailing dot
    invalid_mx: tuple[InvalidPattern, ...] = ()
    extensions: tuple[tuple[str, str], ...] = ()  # unknown keys, ignored


@dataclass(frozen=True)
class TlsRptRecord:
    """A valid `_smtp._tls` TXT record (RFC 8460 section 3)."""

    rua: tuple[str, ...]  # mailto: and https: URIs, in the published order
    text: str
    extensions: tuple[tuple[str, str], ...] = ()


class MxStatus(enum.StrEnum):
    MX = "mx"  # MX records name the hosts
    IMPLICIT = "implicit"  # no MX, the domain's own A/AAAA (RFC 5321 section 5.1)
    NULL = "null"  # "0 ." (RFC 7505): the domain accepts no mail
    NONE = "none"  # no MX and no address, or no such domain
    ERROR = "error"  # the lookup failed (timeout, SERVFAIL)


@dataclass(frozen=True)
class MxHost:
    name: str  # lower case, without the trailing dot
    preference: int


@dataclass(frozen=True)
class MxSet:
    status: MxStatus
    hosts: tuple[MxHost, ...] = ()  # by preference, then name; empty unless mx or implicit
    detail: str = ""


@dataclass(frozen=True)
class StsResult:
    state: StsState
    record_present: bool  # at least one `_mta-sts` TXT record starts with v=STSv1
    record: StsRecord | None = None
    policy: Policy | None = None
    failure: CheckFailure | None = None  # None exactly when `policy` is set
    records: tuple[str, ...] = ()  # every TXT string seen at `_mta-sts`, for the report
    policy_url: str = ""
    policy_address: str | None = None  # the IP the policy was fetched from
    policy_text: str | None = None  # the body as served (at most 64 KiB)
    policy_fetched_at: float | None = None  # unix seconds
    from_cache: bool = False

    @property
    def policy_valid(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True)
class TlsRptResult:
    record_present: bool  # at least one `_smtp._tls` TXT record starts with v=TLSRPTv1
    record: TlsRptRecord | None = None
    failure: CheckFailure | None = None  # None exactly when `record` is set
    records: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class MxCheck:
    """One MX host of the domain, measured against the policy and probed on port 25."""

    host: MxHost
    policy_match: bool | None  # None: no valid policy with mx patterns to match against
    probe: ProbeResult | None = None  # None: not probed
    compliant: bool | None = None  # None: not probed

    @property
    def name(self) -> str:
        return self.host.name


@dataclass(frozen=True)
class DomainResult:
    domain: str
    started_at: float  # unix seconds
    duration: float  # seconds, MX probes included
    mx: MxSet
    sts: StsResult
    tlsrpt: TlsRptResult
    mx_checks: tuple[MxCheck, ...] = ()  # one per host of `mx`, in its order
    labels: tuple[tuple[str, str], ...] = ()  # the domain's static labels, sorted by name
