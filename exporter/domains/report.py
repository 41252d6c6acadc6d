"""Presentation of one domain check: the problems found, a readable report, and a JSON object."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporter.dane.report import FINE, checks_of, summary_lines
from exporter.domains.model import (
    CheckReason,
    DomainResult,
    MxCheck,
    MxStatus,
    StsState,
)
from exporter.model import ProbeResult
from exporter.report import to_json as probe_json

_Add = Callable[[str], None]


def why_not_compliant(result: ProbeResult) -> str:
    """The first reason an MTA-STS sender would not deliver to this MX, in words."""
    f = result.failure
    if f is not None:
        return f"probe failed at {f.stage}: {f.reason}"
    if result.smtp.starttls_advertised is not True:
        return "STARTTLS not offered"
    v = result.verification
    if result.tls is None or v is None:
        return "no TLS session"
    if not v.trusted:
        return f"certificate not trusted: {v.reason}"
    if not v.hostname_match:
        return f"certificate not valid for {result.target.server_name}"
    return "compliant"


@dataclass(frozen=True)
class Finding:
    """One problem found: `code` from a closed list (docs/domains.md), `text` for people."""

    code: str
    text: str


def findings(r: DomainResult) -> list[Finding]:
    """What an operator should fix, most fundamental first; empty when all is well. A domain
    without MTA-STS or TLS-RPT records is not a problem; a broken record or policy is. Codes:
    `mx_lookup_failed`, `no_mx`, an MTA-STS failure reason (`multiple_records` ... `timeout`),
    `invalid_mx_pattern`, `mx_mismatch`, `mx_not_compliant`, `dane_failed`, `tlsrpt_invalid`."""
    out: list[Finding] = []
    if r.mx.status in (MxStatus.ERROR, MxStatus.NONE):
        code = "mx_lookup_failed" if r.mx.status is MxStatus.ERROR else "no_mx"
        out.append(Finding(code, f"MX: {r.mx.detail}"))
    sts = r.sts
    if sts.failure is not None and sts.failure.reason is not CheckReason.NO_RECORD:
        text = f"MTA-STS {sts.failure.reason}: {sts.failure.detail}"
        out.append(Finding(str(sts.failure.reason), text))
    if sts.policy is not None:
        for p in sts.policy.invalid_mx:
            text = f"MTA-STS policy: mx {p.pattern!r} is ignored by senders: {p.why}"
            out.append(Finding("invalid_mx_pattern", text))
    for c in r.mx_checks:
        if c.policy_match is False and sts.state in (StsState.ENFORCE, StsState.TESTING):
            text = f"MX {c.name} matches no mx pattern of the {sts.state} policy" + (
                ": MTA-STS senders will not deliver to it" if sts.state is StsState.ENFORCE else ""
            )
            out.append(Finding("mx_mismatch", text))
        if c.compliant is False and c.probe is not None:
            text = f"MX {c.name} is not MTA-STS compliant: {why_not_compliant(c.probe)}"
            out.append(Finding("mx_not_compliant", text))
        for address, dane in checks_of(c.probe) if c.probe is not None else ():
            if dane.reason not in FINE:
                at = f" at {address}" if address else ""
                text = f"MX {c.name}{at}: DANE {dane.reason}: {dane.detail}"
                out.append(Finding("dane_failed", text))
    rpt = r.tlsrpt
    if rpt.failure is not None and rpt.failure.reason is not CheckReason.NO_RECORD:
        text = f"TLS-RPT {rpt.failure.reason}: {rpt.failure.detail}"
        out.append(Finding("tlsrpt_invalid", text))
    return out


def problems(r: DomainResult) -> list[str]:
    """The findings' texts, one line each."""
    return [f.text for f in findings(r)]


def to_json(r: DomainResult, now: float | None = None) -> dict[str, Any]:
    """The result as one JSON-ready object."""
    now = time.time() if now is None else now
    sts, rpt, policy = r.sts, r.tlsrpt, r.sts.policy
    return {
        "domain": r.domain,
        "started_at": r.started_at,
        "duration": r.duration,
        "labels": dict(r.labels),
        "problems": problems(r),
        "mx": {
            "status": str(r.mx.status),
            "detail": r.mx.detail,
            "hosts": [{"name": h.name, "preference": h.preference} for h in r.mx.hosts],
        },
        "mta_sts": {
            "state": str(sts.state),
            "record_present": sts.record_present,
            "record": sts.record.text if sts.record else None,
            "id": sts.record.id if sts.record else None,
            "records": list(sts.records),
            "policy_valid": sts.policy_valid,
            "reason": str(sts.failure.reason) if sts.failure else None,
            "detail": sts.failure.detail if sts.failure else None,
            "policy_url": sts.policy_url or None,
            "policy_address": sts.policy_address,
            "policy_fetched_at": sts.policy_fetched_at,
            "from_cache": sts.from_cache,
            "policy": None
            if policy is None
            else {
                "mode": str(policy.mode),
                "max_age": policy.max_age,
                "mx": list(policy.mx),
                "invalid_mx": [{"pattern": p.pattern, "why": p.why} for p in policy.invalid_mx],
                "extensions": dict(policy.extensions),
            },
            "policy_text": sts.policy_text,
        },
        "tlsrpt": {
            "record_present": rpt.record_present,
            "valid": rpt.valid,
            "record": rpt.record.text if rpt.record else None,
            "rua": list(rpt.record.rua) if rpt.record else [],
            "records": list(rpt.records),
            "reason": str(rpt.failure.reason) if rpt.failure else None,
            "detail": rpt.failure.detail if rpt.failure else None,
        },
        "mx_checks": [_mx_json(c, now) for c in r.mx_checks],
    }


def _mx_json(c: MxCheck, now: float) -> dict[str, Any]:
    return {
        "name": c.name,
        "preference": c.host.preference,
        "policy_match": c.policy_match,
        "compliant": c.compliant,
        "why": None if c.probe is None else why_not_compliant(c.probe),
        "probe": None if c.probe is None else probe_json(c.probe, now),
    }


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def render_text(r: DomainResult, now: float | None = None) -> str:
    """The report for a person: problems first, then MX, MTA-STS, TLS-RPT and each MX probe."""
    now = time.time() if now is None else now
    out: list[str] = []
    add = out.append
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.started_at))
    add(f"Domain {r.domain}  (checked {when}, {r.duration:.2f}s)")
    found = problems(r)
    add("")
    if found:
        add(f"PROBLEMS ({len(found)})")
        out.extend(f"  - {line}" for line in found)
    else:
        add("No problems found.")
    add("")
    add(f"MX ({r.mx.status})" + (f": {r.mx.detail}" if r.mx.detail else ""))
    for c in r.mx_checks:
        if c.probe is None:
            compliant = "not probed"
        elif c.compliant:
            compliant = "yes"
        else:
            compliant = f"NO ({why_not_compliant(c.probe)})"
        add(
            f"  {c.host.preference:>5} {c.name}  policy match: {_yes(c.policy_match)}  "
            f"compliant: {compliant}"
        )
    _sts_text(r, add)
    _tlsrpt_text(r, add)
    for c in r.mx_checks:
        if c.probe is not None:
            _probe_text(c.probe, now, add)
    return "\n".join(out)


def _sts_text(r: DomainResult, add: _Add) -> None:
    sts = r.sts
    add("")
    add(f"MTA-STS: {sts.state}")
    for text in sts.records:
        add(f"  TXT _mta-sts.{r.domain}: {text!r}")
    if sts.failure is not None:
        add(f"  reason: {sts.failure.reason}")
        add(f"  detail: {sts.failure.detail}")
    if sts.policy_url and (sts.policy_text is not None or sts.failure is None):
        source = f" (from {sts.policy_address})" if sts.policy_address else ""
        cached = ", cached" if sts.from_cache else ""
        add(f"  policy: {sts.policy_url}{source}{cached}")
    p = sts.policy
    if p is not None:
        add(f"    mode:    {p.mode}")
        add(f"    max_age: {p.max_age} ({p.max_age / 86400:.1f} days)")
        add(f"    mx:      {', '.join(p.mx) or '(none)'}")
        for bad in p.invalid_mx:
            add(f"    ignored: mx {bad.pattern!r}: {bad.why}")


def _tlsrpt_text(r: DomainResult, add: _Add) -> None:
    rpt = r.tlsrpt
    add("")
    state = "valid" if rpt.valid else ("invalid" if rpt.record_present else "absent")
    add(f"TLS-RPT: {state}")
    for text in rpt.records:
        add(f"  TXT _smtp._tls.{r.domain}: {text!r}")
    if rpt.record is not None:
        add(f"  rua: {', '.join(rpt.record.rua)}")
    if rpt.failure is not None:
        add(f"  reason: {rpt.failure.reason}")
        add(f"  detail: {rpt.failure.detail}")


def _probe_text(p: ProbeResult, now: float, add: _Add) -> None:
    add("")
    verdict = "OK" if p.success else "FAILED"
    add(f"Probe of {p.target.name}: {verdict}" + (f" ({p.peer_address})" if p.peer_address else ""))
    if p.failure is not None:
        add(f"  stage/reason: {p.failure.stage}/{p.failure.reason}: {p.failure.detail}")
    if p.smtp.starttls_advertised is not None:
        add(f"  STARTTLS advertised: {_yes(p.smtp.starttls_advertised)}")
    if p.tls is not None:
        add(f"  TLS: {p.tls.version}, {p.tls.cipher}")
    c = p.certificate
    if c is not None:
        add(f"  certificate: {c.subject} (names: {', '.join(c.sans_dns + c.sans_ip) or 'none'})")
        add(f"  expires in: {c.days_until_expiry(now):.1f} days")
    v = p.verification
    if v is not None:
        add(
            f"  trusted: {_yes(v.trusted)}  valid for {p.target.server_name}: "
            f"{_yes(v.hostname_match)}  ({v.reason}{': ' + v.detail if v.detail else ''})"
        )
    for line in summary_lines(p):
        add(line)
