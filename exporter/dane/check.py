"""One DANE check of one MX host: the TLSA lookup, then the served chain against its records.

`check_dane` answers the three questions the metrics export: are there TLSA records for the
host, is that answer DNSSEC-secure, and would a DANE sender (RFC 7672) authenticate the chain the
probe was served. It never raises (but on cancellation): any failure is a DaneReason.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from exporter.dane import names
from exporter.dane.lookup import DaneDns, tlsa_name
from exporter.dane.match import match_chain, short
from exporter.dane.model import DaneReason, DaneResult, LookupStatus, TlsaAnswer
from exporter.dane.records import split_usable
from exporter.model import ProbeResult

log = logging.getLogger(__name__)

_LOOKUP_FAILURES = {
    LookupStatus.BOGUS: DaneReason.BOGUS,
    LookupStatus.SERVFAIL: DaneReason.SERVFAIL,
    LookupStatus.DNS_ERROR: DaneReason.DNS_ERROR,
    LookupStatus.TIMEOUT: DaneReason.TIMEOUT,
}


async def check_dane(
    mx_host: str,
    served: ProbeResult | Sequence[bytes],
    dns: DaneDns,
    *,
    port: int = 25,
    extra_names: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> DaneResult:
    """Check `mx_host`'s TLSA records against `served`: a probe of that host (its `chain_der`)
    or the served chain itself (DER, leaf first).

    `extra_names` are further reference identifiers a DANE-TA leaf may carry besides the MX host
    name, such as the next-hop domain or, after a secure CNAME expansion, the expanded name
    (RFC 7672 section 3.2.2)."""
    started_at, started = time.time(), time.monotonic()
    answer: TlsaAnswer | Exception
    try:
        answer = await dns.tlsa(names.normalize(mx_host), port)
    except Exception as exc:
        answer = exc
    return verdict(
        mx_host,
        answer,
        served,
        port=port,
        extra_names=extra_names,
        now=now,
        started_at=started_at,
        duration=time.monotonic() - started,
    )


def verdict(
    mx_host: str,
    answer: TlsaAnswer | Exception,
    served: ProbeResult | Sequence[bytes],
    *,
    port: int = 25,
    extra_names: Sequence[str] = (),
    now: datetime.datetime | None = None,
    started_at: float | None = None,
    duration: float = 0.0,
) -> DaneResult:
    """The DANE check of `served` given the TLSA lookup's `answer` for `mx_host` (or the
    exception the lookup raised): what `check_dane` returns, for a lookup made beforehand, so
    that one lookup can run beside the probe and serve every address it probed. `duration` is
    the lookup's. Never raises."""
    begun = time.monotonic()
    host = names.normalize(mx_host)
    blank = DaneResult(
        mx_host=host,
        tlsa_name=tlsa_name(host, port),
        tlsa_present=False,
        dnssec_secure=False,
        match=False,
        reason=DaneReason.INTERNAL_ERROR,
        reference_names=names.reference_names(host, extra_names),
        started_at=time.time() if started_at is None else started_at,
    )
    try:
        if isinstance(answer, Exception):
            raise answer
        result = _judge(blank, answer, served, now)
    except Exception as exc:
        log.exception("internal error checking DANE for %s", host)
        result = replace(blank, detail=f"{type(exc).__name__}: {exc}")
    result = replace(result, duration=duration + time.monotonic() - begun)
    log.debug(
        "DANE %s: present=%s secure=%s match=%s reason=%s %s",
        host,
        result.tlsa_present,
        result.dnssec_secure,
        result.match,
        result.reason,
        result.detail,
    )
    return result


def _judge(
    blank: DaneResult,
    answer: TlsaAnswer,
    served: ProbeResult | Sequence[bytes],
    now: datetime.datetime | None,
) -> DaneResult:
    failure = _LOOKUP_FAILURES.get(answer.status)
    if failure is not None:
        return replace(blank, reason=failure, detail=answer.detail, lookup=answer)
    if answer.status is LookupStatus.NONE:
        proof = "securely denied" if answer.secure else "denied without DNSSEC"
        return replace(
            blank,
            dnssec_secure=answer.secure,
            reason=DaneReason.NO_TLSA,
            detail=f"{answer.detail} ({proof})",
            lookup=answer,
        )
    _, unusable = split_usable(answer.records)
    chain, why_none = _chain(served)
    outcome = match_chain(
        answer.records,
        chain,
        blank.reference_names,
        now or datetime.datetime.now(datetime.UTC),
    )
    detail = outcome.detail
    if outcome.reason is DaneReason.NO_CERTIFICATE and why_none:
        detail = f"{detail}: {why_none}"
    if outcome.reason is DaneReason.NO_USABLE_RECORDS and unusable:
        detail += ": " + ", ".join(f"{short(r)} ({why})" for r, why in unusable[:6])
    if answer.malformed:
        detail += f"; {len(answer.malformed)} unreadable record(s) skipped: " + "; ".join(
            answer.malformed
        )
    found = replace(
        blank,
        tlsa_present=True,
        dnssec_secure=answer.secure,
        records=answer.records,
        unusable=unusable,
        lookup=answer,
    )
    if not answer.secure:
        # RFC 7672 section 2.2: records that do not validate are ignored by senders; what they
        # would say is only shown.
        return replace(
            found,
            reason=DaneReason.INSECURE,
            detail=f"{answer.qname}: TLSA records without DNSSEC validation (AD not set); "
            f"if they were secure: {outcome.reason}: {detail}",
        )
    return replace(
        found,
        match=outcome.ok,
        reason=outcome.reason,
        detail=detail,
        matched=outcome.record,
        matched_depth=outcome.depth,
    )


def _chain(served: ProbeResult | Sequence[bytes]) -> tuple[tuple[bytes, ...], str]:
    if not isinstance(served, ProbeResult):
        return tuple(served), ""
    if served.chain_der:
        return served.chain_der, ""
    f = served.failure
    why = f"the probe stopped at {f.stage}: {f.reason}" if f else "the probe saw no certificate"
    return (), why
