"""One check of one mail domain: MX set, MTA-STS record and policy, TLS-RPT record, MX probes.

`DomainChecker` is what a scheduler keeps per domain: it holds the domain's `PolicyCache`, so the
policy is fetched again only when the TXT `id` changes or the policy is older than the refresh
interval (RFC 8461 section 3.3). Whatever DNS, HTTPS or the published records do, `check()`
returns a DomainResult that says so; only a bug (or cancellation) makes it raise.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from exporter.domains import fetch
from exporter.domains.fetch import Dns, DnsError
from exporter.domains.model import (
    CheckError,
    CheckFailure,
    CheckReason,
    DomainResult,
    MxCheck,
    MxHost,
    MxSet,
    MxStatus,
    Policy,
    StsMode,
    StsRecord,
    StsResult,
    StsState,
    TlsRptResult,
)
from exporter.domains.mta_sts import (
    STS_VERSION,
    begins_with,
    parse_policy,
    policy_matches,
    select_sts_record,
)
from exporter.domains.tlsrpt import TLSRPT_VERSION, select_tlsrpt_record
from exporter.model import Checks, ProbeResult, Target, VerifyPolicy
from exporter.probe import probe

ProbeFn = Callable[[Target], Awaitable[ProbeResult]]

SMTP_PORT = 25  # MTA-STS concerns inbound MX hosts on port 25 (RFC 8461 section 4)
# A policy younger than this share of the refresh interval is reused: checks on a fixed grid
# land a little early or late, and "just under one interval" must count as one interval.
_FRESH_SHARE = 0.95
_DOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
)


@dataclass(frozen=True)
class CachedPolicy:
    record_id: str
    policy: Policy
    text: str
    url: str
    address: str
    fetched_at: float


class PolicyCache:
    """The last good policy of one domain, reused while the TXT `id` is unchanged and the policy
    is younger than `max_interval` seconds (and than its own max_age)."""

    def __init__(self, max_interval: float = 3600.0) -> None:
        self.max_interval = max_interval
        self._entry: CachedPolicy | None = None

    def get(self, record_id: str, now: float) -> CachedPolicy | None:
        entry = self._entry
        if entry is None or entry.record_id != record_id:
            return None
        fresh_for = min(self.max_interval, float(entry.policy.max_age)) * _FRESH_SHARE
        if now - entry.fetched_at >= fresh_for:
            return None
        return entry

    def put(self, entry: CachedPolicy) -> None:
        self._entry = entry

    def clear(self) -> None:
        self._entry = None


class DomainChecker:
    """Checks one domain, again and again; keep one per configured domain."""

    def __init__(
        self,
        domain: str,
        dns: Dns,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
        probe_timeout: float = 10.0,
        ehlo_name: str | None = None,
        labels: Mapping[str, str] | None = None,
        policy_max_interval: float = 3600.0,
        probe_fn: ProbeFn | None = None,
        clock: Callable[[], float] = time.time,
        all_addresses: bool = False,
        checks: Checks | None = None,
    ) -> None:
        self.domain = normalize_domain(domain)
        self.dns = dns
        self.ca_file = ca_file
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self.ehlo_name = ehlo_name
        self.labels = tuple(sorted((labels or {}).items()))
        self.cache = PolicyCache(policy_max_interval)
        self._probe_fn = probe_fn or self._probe
        self._clock = clock
        self.all_addresses = all_addresses
        self.checks = checks or Checks()

    async def _probe(self, target: Target) -> ProbeResult:
        return await probe(target, resolver=self.dns.addresses)

    def mx_target(self, host: MxHost) -> Target:
        """The port-25 STARTTLS probe of one MX host: certificate checked for the MX name
        (RFC 8461 section 4.2) and reported on, labelled with the domain and preference."""
        return Target.create(
            host.name,
            SMTP_PORT,
            server_name=host.name,
            verify=VerifyPolicy.REPORT,
            ehlo_name=self.ehlo_name,
            ca_file=self.ca_file,
            timeout=self.probe_timeout,
            labels={
                **dict(self.labels),
                "domain": self.domain,
                "mx_preference": str(host.preference),
            },
            all_addresses=self.all_addresses,
            checks=self.checks,
        )

    async def check(self, *, probe_mx: bool = True) -> DomainResult:
        """MX, MTA-STS and TLS-RPT now; then each MX host probed, unless `probe_mx` is false."""
        started = self._clock()
        t0 = time.monotonic()
        mx, sts, tlsrpt = await asyncio.gather(
            fetch.lookup_mx(self.dns, self.domain),
            self._sts(),
            self._tlsrpt(),
        )
        result = DomainResult(
            domain=self.domain,
            started_at=started,
            duration=0.0,
            mx=mx,
            sts=sts,
            tlsrpt=tlsrpt,
            mx_checks=mx_checks(mx, sts.policy, {}),
            labels=self.labels,
        )
        if probe_mx:
            result = await self.probe_mx(result)
        return replace(result, duration=time.monotonic() - t0)

    async def probe_mx(self, result: DomainResult) -> DomainResult:
        """`result` with every MX host probed afresh (concurrently: they are different hosts)."""
        hosts = [c.host for c in result.mx_checks]
        probes = await asyncio.gather(*(self._probe_fn(self.mx_target(h)) for h in hosts))
        return with_probes(result, {h.name: p for h, p in zip(hosts, probes, strict=True)})

    async def _sts(self) -> StsResult:
        name = f"_mta-sts.{self.domain}"
        try:
            texts = await fetch.lookup_txt(self.dns, name)
        except DnsError as exc:
            return StsResult(StsState.INVALID, False, failure=_dns_failure(exc))
        present = any(begins_with(t, STS_VERSION) for t in texts)
        try:
            record = select_sts_record(texts)
        except CheckError as exc:
            if exc.reason is CheckReason.NO_RECORD:
                self.cache.clear()
            state = StsState.ABSENT if exc.reason is CheckReason.NO_RECORD else StsState.INVALID
            failure = CheckFailure(exc.reason, f"{name}: {exc.detail}")
            return StsResult(state, present, failure=failure, records=texts)
        return await self._policy(record, texts)

    async def _policy(self, record: StsRecord, texts: tuple[str, ...]) -> StsResult:
        url = fetch.policy_url(self.domain)
        now = self._clock()
        cached = self.cache.get(record.id, now)
        base = StsResult(StsState.INVALID, True, record=record, records=texts, policy_url=url)
        if cached is not None:
            return _with_policy(base, cached, from_cache=True)
        try:
            response = await fetch.fetch_policy(
                self.domain, self.dns, ca_file=self.ca_file, timeout=self.timeout
            )
        except CheckError as exc:
            return replace(base, failure=CheckFailure(exc.reason, exc.detail))
        try:
            policy = parse_policy(response.text)
        except CheckError as exc:
            failure = CheckFailure(exc.reason, f"{url}: {exc.detail}")
            return replace(
                base, failure=failure, policy_text=response.text, policy_address=response.address
            )
        entry = CachedPolicy(record.id, policy, response.text, url, response.address, now)
        self.cache.put(entry)
        return _with_policy(base, entry, from_cache=False)

    async def _tlsrpt(self) -> TlsRptResult:
        name = f"_smtp._tls.{self.domain}"
        try:
            texts = await fetch.lookup_txt(self.dns, name)
        except DnsError as exc:
            return TlsRptResult(False, failure=_dns_failure(exc))
        present = any(begins_with(t, TLSRPT_VERSION) for t in texts)
        try:
            record = select_tlsrpt_record(texts)
        except CheckError as exc:
            failure = CheckFailure(exc.reason, f"{name}: {exc.detail}")
            return TlsRptResult(present, failure=failure, records=texts)
        return TlsRptResult(True, record=record, records=texts)


def normalize_domain(domain: str) -> str:
    return domain.strip().lower().removesuffix(".")


def is_domain_name(domain: str) -> bool:
    """A normalized mail domain: two or more A-labels (letters, digits, inner hyphens)."""
    return _DOMAIN.fullmatch(domain) is not None


def _dns_failure(exc: DnsError) -> CheckFailure:
    return CheckFailure(CheckReason.DNS_ERROR, str(exc))


def _with_policy(base: StsResult, entry: CachedPolicy, *, from_cache: bool) -> StsResult:
    return replace(
        base,
        state=StsState(entry.policy.mode.value),
        policy=entry.policy,
        policy_text=entry.text,
        policy_address=entry.address,
        policy_fetched_at=entry.fetched_at,
        from_cache=from_cache,
    )


def mx_compliant(result: ProbeResult) -> bool:
    """Whether an MTA-STS sender would deliver to this MX (RFC 8461 section 4.2): the dialogue
    completed, STARTTLS was offered and the certificate is trusted and valid for the MX name.
    With all_addresses: at every address, since a sender may pick any of them."""
    if result.addresses:
        return all(mx_compliant(one) for one in result.addresses)
    v = result.verification
    return (
        result.success
        and result.smtp.starttls_advertised is True
        and result.tls is not None
        and v is not None
        and v.trusted
        and v.hostname_match
    )


def mx_checks(
    mx: MxSet, policy: Policy | None, probes: Mapping[str, ProbeResult]
) -> tuple[MxCheck, ...]:
    """The per-MX verdicts: policy match (when there are patterns) and, if probed, compliance."""
    if mx.status not in (MxStatus.MX, MxStatus.IMPLICIT):
        return ()
    checks = []
    for host in mx.hosts:
        match = None
        if policy is not None and (policy.mx or policy.mode is not StsMode.NONE):
            match = policy_matches(policy, host.name)
        result = probes.get(host.name)
        compliant = None if result is None else mx_compliant(result)
        checks.append(MxCheck(host, match, result, compliant))
    return tuple(checks)


def with_probes(result: DomainResult, probes: Mapping[str, ProbeResult]) -> DomainResult:
    """`result` with these probe results (MX host name -> result) in its MX verdicts."""
    return replace(result, mx_checks=mx_checks(result.mx, result.sts.policy, probes))
