"""Presentation of one probe result: a readable report for a person, and a JSON object."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from exporter.model import CertFacts, ProbeResult


def to_json(result: ProbeResult, now: float | None = None) -> dict[str, Any]:
    """The result as one JSON-ready object; the flat keys first, then every detail."""
    now = time.time() if now is None else now
    r, f, v, cert = result, result.failure, result.verification, result.certificate
    return {
        "target": r.target.name,
        "host": r.target.host,
        "port": r.target.port,
        "mode": str(r.target.mode),
        "verify": str(r.target.verify),
        "server_name": r.target.server_name,
        "success": r.success,
        "stage": str(f.stage) if f else None,
        "reason": str(f.reason) if f else None,
        "detail": f.detail if f else None,
        "peer_address": r.peer_address,
        "address_family": r.address_family,
        "started_at": r.started_at,
        "phases": dict(r.phases.items()),
        "greeting_code": r.smtp.greeting_code,
        "starttls_advertised": r.smtp.starttls_advertised,
        "auth_before_tls": list(r.smtp.auth_before_tls),
        "extensions_before_tls": list(r.smtp.extensions_before_tls),
        "extensions_after_tls": list(r.smtp.extensions_after_tls),
        "plaintext_after_starttls": r.smtp.plaintext_after_starttls,
        "tls_version": r.tls.version if r.tls else None,
        "tls_cipher": r.tls.cipher if r.tls else None,
        "cert_days_until_expiry": cert.days_until_expiry(now) if cert else None,
        "cert_trusted": v.trusted if v else None,
        "cert_hostname_match": v.hostname_match if v else None,
        "cert_verify_reason": str(v.reason) if v else None,
        "cert_verify_detail": v.detail if v else None,
        "trust_store": v.trust_store if v else None,
        "certificate": _cert(cert, now) if cert else None,
        "chain": [_cert(c, now) for c in r.chain],
        "chain_earliest_not_after": r.chain_earliest_not_after,
        "transcript": [dataclasses.asdict(e) for e in r.transcript],
        "addresses": [to_json(one, now) for one in r.addresses],  # all_addresses: each's own
    }


def _cert(c: CertFacts, now: float) -> dict[str, Any]:
    out = dataclasses.asdict(c)
    out["sans_dns"], out["sans_ip"] = list(c.sans_dns), list(c.sans_ip)
    out["days_until_expiry"] = round(c.days_until_expiry(now), 3)
    return out


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def render_text(result: ProbeResult, now: float | None = None) -> str:
    """The report an operator reads at 3 a.m.: verdict first, then what was seen."""
    now = time.time() if now is None else now
    r, t = result, result.target
    out: list[str] = []
    add = out.append
    verdict = "OK" if r.success else "FAILED"
    add(f"{verdict}  {t.name}  (mode {t.mode}, verify {t.verify}, server name {t.server_name})")
    if r.failure:
        add(f"  stage:  {r.failure.stage}")
        add(f"  reason: {r.failure.reason}")
        if r.failure.detail:
            add(f"  detail: {r.failure.detail}")
    if r.peer_address:
        add(f"  peer:   {r.peer_address} ({r.address_family})")
    if r.addresses:
        add("")
        add("Addresses (all_addresses: each probed on its own; their transcripts follow)")
        for one in r.addresses:
            add(f"  {one.peer_address:<40}{_address_line(one, now)}")
    add("")
    add("Phases (seconds)")
    for name, secs in r.phases.items():
        add(f"  {name:<14}{secs:.4f}")
    add("")
    add("SMTP")
    s = r.smtp
    if s.greeting_code is not None:
        first = s.greeting.splitlines()[0] if s.greeting else ""
        add(f"  greeting:            {s.greeting_code} {first}")
    if s.starttls_advertised is not None:
        add(f"  STARTTLS advertised: {'yes' if s.starttls_advertised else 'NO'}")
    if t.mode == "starttls" and s.extensions_before_tls:
        add(f"  AUTH before TLS:     {' '.join(s.auth_before_tls) or 'none'}")
    if s.plaintext_after_starttls:
        add("  WARNING: plaintext sent after 220 to STARTTLS (discarded, RFC 3207 4.2)")
    if s.extensions_after_tls:
        add(f"  extensions in TLS:   {' '.join(s.extensions_after_tls)}")
    if r.tls:
        add("")
        add("TLS")
        add(f"  version: {r.tls.version}")
        add(f"  cipher:  {r.tls.cipher}")
    if r.certificate:
        c = r.certificate
        add("")
        add("Certificate (leaf)")
        add(f"  subject:      {c.subject}")
        add(f"  issuer:       {c.issuer}")
        add(f"  names:        {', '.join(c.sans_dns + c.sans_ip) or '(no subjectAltName)'}")
        add(f"  valid:        {_when(c.not_before)} .. {_when(c.not_after)}")
        add(f"  expires in:   {c.days_until_expiry(now):.1f} days")
        add(f"  key:          {c.key_type} {c.key_bits or ''}".rstrip())
        add(f"  signature:    {c.signature_algorithm}")
        add(f"  serial:       {c.serial}")
        add(f"  sha256:       {c.fingerprint_sha256}")
        for i, chained in enumerate(r.chain[1:], start=1):
            add(f"  chain[{i}]:     {chained.subject} (expires {_when(chained.not_after)})")
    if r.verification:
        v = r.verification
        add("")
        add(f"Verification (trust store: {v.trust_store})")
        add(f"  trusted:        {'yes' if v.trusted else 'NO'}")
        add(f"  hostname match: {'yes' if v.hostname_match else 'NO'}")
        add(f"  outcome:        {v.reason}" + (f" ({v.detail})" if v.detail else ""))
    if r.transcript:
        add("")
        add("Transcript")
        for e in r.transcript:
            lines = e.text.splitlines() or [""]
            add(f"  {e.at:8.4f} {e.kind:<5}{lines[0]}")
            for more in lines[1:]:
                add(f"  {'':8} {'':<5}{more}")
    return "\n".join(out)


def _address_line(r: ProbeResult, now: float) -> str:
    if r.failure is not None:
        return f"FAILED at {r.failure.stage}: {r.failure.reason}"
    parts = ["OK", r.tls.version if r.tls else ""]
    if r.certificate is not None:
        parts.append(f"certificate expires in {r.certificate.days_until_expiry(now):.1f} days")
    return "  ".join(p for p in parts if p)
