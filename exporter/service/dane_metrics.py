"""The metric families of DANE, built by the collector from each probe's DANE check.

DANE series are per-endpoint series (the endpoint labels; `domain` and `mx_preference` for an MX
host, `address` and `ip_family` with all_addresses) of the targets and MX hosts with `dane`, from
the check that ran with their last probe. The three 0/1 gauges and the info series are there for
every check; the record counts when the lookup got an answer. No digest and no record text is a
label: a key rollover would make new series; /debug and the reports show the records. For an MX
host whose certificate matches its `3 1 1` record:

    smtp_tls_dane_tlsa_present{...} 1.0
    smtp_tls_dane_dnssec_secure{...} 1.0
    smtp_tls_dane_match{...} 1.0
    smtp_tls_dane_check_info{...,reason="ok"} 1.0
    smtp_tls_dane_tlsa_records{...} 1.0
    smtp_tls_dane_tlsa_unusable_records{...} 0.0

docs/metrics.md describes every metric, docs/dane.md the reasons.
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.dane.model import DaneReason, DaneResult

_FROM_PROBE = "from the DANE check of the last scheduled probe"

# The lookup got no answer: the records are unknown, so they are not counted.
_UNANSWERED = frozenset(
    {
        DaneReason.BOGUS,
        DaneReason.SERVFAIL,
        DaneReason.DNS_ERROR,
        DaneReason.TIMEOUT,
        DaneReason.INTERNAL_ERROR,
    }
)

DANE_HELP = {
    "smtp_tls_dane_tlsa_present": (
        "1 if the TLSA lookup at _25._tcp.HOST returned records (DNSSEC-secure or not), 0 if "
        f"there are none or the lookup failed ({_FROM_PROBE})."
    ),
    "smtp_tls_dane_dnssec_secure": (
        "1 if the TLSA answer (the records, or the proof that there are none) was validated by "
        f"the configured resolver (AD bit), 0 if not ({_FROM_PROBE})."
    ),
    "smtp_tls_dane_match": (
        "1 if a DANE sender (RFC 7672) would authenticate the server: secure TLSA records, one "
        f"of them usable and matching the served chain; 0 if not ({_FROM_PROBE})."
    ),
    "smtp_tls_dane_check_info": (
        "The DANE verdict as the reason label: ok, or why not (no_tlsa, insecure, bogus, "
        "servfail, dns_error, timeout, no_usable_records, no_certificate, mismatch, "
        f"ta_unverified, expired, name_mismatch, internal_error); always 1 ({_FROM_PROBE})."
    ),
    "smtp_tls_dane_tlsa_records": (
        "TLSA records found for the host, unusable and unreadable ones included; absent when "
        f"the lookup failed ({_FROM_PROBE})."
    ),
    "smtp_tls_dane_tlsa_unusable_records": (
        "TLSA records that cannot authenticate an SMTP server (usages 0 and 1, unknown "
        f"parameters, unreadable); absent when the lookup failed ({_FROM_PROBE})."
    ),
}

Add = Callable[..., None]  # add(name, value, **labels), the collector's per-endpoint sample adder


def add_dane_samples(add: Add, dane: DaneResult | None) -> None:
    if dane is None:
        return
    add("smtp_tls_dane_tlsa_present", dane.tlsa_present)
    add("smtp_tls_dane_dnssec_secure", dane.dnssec_secure)
    add("smtp_tls_dane_match", dane.match)
    add("smtp_tls_dane_check_info", 1, reason=str(dane.reason))
    if dane.reason not in _UNANSWERED:
        malformed = len(dane.lookup.malformed) if dane.lookup is not None else 0
        add("smtp_tls_dane_tlsa_records", len(dane.records) + malformed)
        add("smtp_tls_dane_tlsa_unusable_records", len(dane.unusable) + malformed)
