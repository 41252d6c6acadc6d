"""Presentation of DANE checks, for the `probe` and `check-domain` reports and /debug: text for a
person, and JSON."""

from __future__ import annotations

from typing import Any

from exporter.dane.match import short
from exporter.dane.model import DaneReason, DaneResult, TlsaRecord
from exporter.model import ProbeResult

# Verdicts that are no problem: DANE authenticates the server, or does not apply to it.
FINE = frozenset({DaneReason.OK, DaneReason.NO_TLSA})

_DEFER = "DANE senders defer the mail"
# What a DANE-aware sender does with this verdict (docs/dane.md, "Reasons").
SENDERS = {
    DaneReason.OK: "DANE senders deliver: the server is authenticated",
    DaneReason.NO_TLSA: "no TLSA records: DANE does not apply, senders use opportunistic TLS",
    DaneReason.INSECURE: "DANE senders ignore records that are not DNSSEC-secure: DANE is off",
    DaneReason.BOGUS: f"{_DEFER}: DNSSEC validation of the TLSA answer fails",
    DaneReason.SERVFAIL: f"{_DEFER} while their resolver fails alike",
    DaneReason.DNS_ERROR: f"{_DEFER} while their resolver fails alike",
    DaneReason.TIMEOUT: f"{_DEFER} while their resolver fails alike",
    DaneReason.NO_USABLE_RECORDS: "DANE senders use TLS without authentication",
    DaneReason.NO_CERTIFICATE: f"{_DEFER}: DANE requires TLS",
    DaneReason.MISMATCH: f"{_DEFER}: no usable record matches the served chain",
    DaneReason.TA_UNVERIFIED: f"{_DEFER}: the leaf does not chain up to the DANE-TA anchor",
    DaneReason.EXPIRED: f"{_DEFER}: a certificate below the DANE-TA anchor is out of date",
    DaneReason.NAME_MISMATCH: f"{_DEFER}: the leaf does not name the MX host",
    DaneReason.INTERNAL_ERROR: "unknown: the check failed (a bug; see the log)",
}


def checks_of(result: ProbeResult) -> list[tuple[str | None, DaneResult]]:
    """The DANE checks of a probe result: (address with all_addresses, else None, check)."""
    if result.dane is not None:
        return [(None, result.dane)]
    return [(r.peer_address, r.dane) for r in result.addresses if r.dane is not None]


def dane_lines(result: ProbeResult) -> list[str]:
    """The DANE section of the probe report; empty without a DANE check."""
    checks = checks_of(result)
    if not checks:
        return []
    first = checks[0][1]
    out = ["", f"DANE ({first.tlsa_name})"]
    lookup = first.lookup
    if lookup is not None and lookup.server:
        via = f" via {lookup.owner}" if lookup.owner and lookup.owner != first.tlsa_name else ""
        out.append(f"  resolver:        {lookup.server}{via}")
    if first.tlsa_present or first.reason is DaneReason.NO_TLSA:
        secure = "yes" if first.dnssec_secure else "NO (AD not set)"
        out.append(f"  DNSSEC secure:   {secure}")
    unusable = dict(first.unusable)
    for record in first.records:
        why = unusable.get(record)
        mark = f"  (unusable: {why})" if why is not None else ""
        out.append(f"  TLSA {shown(record)}{mark}")
    if lookup is not None:
        out.extend(f"  TLSA unreadable: {m}" for m in lookup.malformed)
    if len(first.reference_names) > 1:
        out.append(f"  names (DANE-TA): {', '.join(first.reference_names)}")
    for address, dane in checks:
        if address is not None:
            out.append(f"  at {address}")
        pad = "    " if address is not None else "  "
        out.append(f"{pad}verdict: {verdict_text(dane)}")
        if dane.matched is not None:
            where = "the leaf" if dane.matched_depth == 0 else f"chain[{dane.matched_depth}]"
            out.append(f"{pad}matched: {short(dane.matched)} on {where}")
        if dane.detail:
            out.append(f"{pad}detail:  {dane.detail}")
    return out


def shown(record: TlsaRecord) -> str:
    """A digest record in full, to compare with the zone; a whole certificate or key cut short."""
    return record.text() if record.mtype != 0 else short(record)


def verdict_text(dane: DaneResult) -> str:
    word = "OK" if dane.reason is DaneReason.OK else str(dane.reason)
    return f"{word} ({SENDERS[dane.reason]})"


def summary_lines(result: ProbeResult) -> list[str]:
    """One line per DANE check, for the check-domain report's probe sections."""
    lines = []
    for address, dane in checks_of(result):
        at = f" at {address}" if address else ""
        detail = f": {dane.detail}" if dane.reason not in FINE and dane.detail else ""
        lines.append(f"  DANE{at}: {verdict_text(dane)}{detail}")
    return lines


def dane_json(dane: DaneResult | None) -> dict[str, Any] | None:
    if dane is None:
        return None
    lookup = dane.lookup
    return {
        "tlsa_name": dane.tlsa_name,
        "reason": str(dane.reason),
        "tlsa_present": dane.tlsa_present,
        "dnssec_secure": dane.dnssec_secure,
        "match": dane.match,
        "detail": dane.detail,
        "records": [r.text() for r in dane.records],
        "unusable": [{"record": r.text(), "why": str(why)} for r, why in dane.unusable],
        "unreadable": list(lookup.malformed) if lookup else [],
        "matched": dane.matched.text() if dane.matched else None,
        "matched_depth": dane.matched_depth,
        "reference_names": list(dane.reference_names),
        "owner": lookup.owner or None if lookup else None,
        "server": lookup.server or None if lookup else None,
        "started_at": dane.started_at,
        "duration": dane.duration,
    }
