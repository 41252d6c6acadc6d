"""The metric families of mail domains, built from their latest check results by the collector.

Every series carries the domain's static labels and `domain`; the values come from the domain's
last scheduled check (MX compliance from the last probe of each MX host). A domain configured but
not yet checked has only `smtp_tls_domain_check_interval_seconds`, from its config. For a domain
with an enforce policy and one MX host:

    smtp_tls_mta_sts_mode{domain="example.test",mode="enforce"} 1.0
    smtp_tls_mta_sts_mode{domain="example.test",mode="testing"} 0.0
    smtp_tls_mta_sts_policy_valid{domain="example.test"} 1.0
    smtp_tls_mta_sts_mx_match{domain="example.test",mx="mail.example.test"} 1.0
    smtp_tls_mta_sts_mx_compliant{domain="example.test",mx="mail.example.test"} 1.0
    smtp_tls_mx_count{domain="example.test"} 1.0
    smtp_tls_mx_lookup_info{domain="example.test",status="mx"} 1.0

The MX hosts' own probe series are the per-endpoint families (collector.py), with the labels
`domain` and `mx_preference`. docs/metrics.md describes every metric.
"""

from __future__ import annotations

from exporter.domains.config import DomainConfig
from exporter.domains.model import DomainResult, MxStatus, StsState
from exporter.service.families import NO_LABELS, Families, Family

_FROM_CHECK = "from the last scheduled check of the domain"

# Per-domain gauges: name -> HELP. Families are emitted in this order.
DOMAIN_HELP = {
    "smtp_tls_mta_sts_mode": (
        "MTA-STS state of the domain, one series per state: 1 for the current one, 0 for the "
        "others. enforce, testing, none: the valid policy's mode; absent: no v=STSv1 record; "
        f"invalid: the record or its policy is unusable ({_FROM_CHECK})."
    ),
    "smtp_tls_mta_sts_record_present": (
        f"1 if a _mta-sts TXT record starts with v=STSv1, 0 if none does ({_FROM_CHECK})."
    ),
    "smtp_tls_mta_sts_policy_valid": (
        f"1 if the MTA-STS record and the policy it announces are valid, 0 if not ({_FROM_CHECK})."
    ),
    "smtp_tls_mta_sts_policy_fetch_failure_info": (
        "1 while the MTA-STS check fails, with the reason; absent while record and policy are "
        f"valid ({_FROM_CHECK})."
    ),
    "smtp_tls_mta_sts_max_age_seconds": (
        f"The valid MTA-STS policy's max_age, in seconds ({_FROM_CHECK})."
    ),
    "smtp_tls_mta_sts_policy_id_info": (
        f"The id of the valid _mta-sts TXT record, as the id label ({_FROM_CHECK})."
    ),
    "smtp_tls_mta_sts_mx_match": (
        "1 if the MX host matches an mx pattern of the domain's MTA-STS policy, 0 if not "
        f"({_FROM_CHECK})."
    ),
    "smtp_tls_mta_sts_mx_compliant": (
        "1 if the MX host offers STARTTLS with a certificate that is trusted and valid for its "
        "name, so MTA-STS senders deliver to it; 0 if not (from the last probe of the MX host)."
    ),
    "smtp_tls_tlsrpt_record_present": (
        f"1 if a _smtp._tls TXT record starts with v=TLSRPTv1, 0 if none does ({_FROM_CHECK})."
    ),
    "smtp_tls_tlsrpt_record_valid": (
        f"1 if exactly one TLS-RPT record is published and it is valid, 0 if not ({_FROM_CHECK})."
    ),
    "smtp_tls_mx_count": (
        "MX hosts of the domain: 1 for an implicit MX (the domain's own address), 0 for a null "
        f"MX or none; absent when the MX lookup failed ({_FROM_CHECK})."
    ),
    "smtp_tls_mx_lookup_info": (
        "Outcome of the domain's MX lookup, as the status label: mx (MX records), implicit (no "
        "MX, the domain's own address), null (a null MX), none (neither MX nor address, or no "
        f"such domain), error (the lookup failed); always 1 ({_FROM_CHECK})."
    ),
    "smtp_tls_domain_last_check_timestamp_seconds": (
        "Unix time at which the last scheduled check of the domain started."
    ),
    "smtp_tls_domain_check_interval_seconds": (
        "Seconds between scheduled checks of the domain, from the config; present from the "
        "moment the domain is configured."
    ),
}


def domain_families() -> dict[str, Family]:
    return {name: Family(name, text) for name, text in DOMAIN_HELP.items()}


def mx_probe_interval(domain: DomainConfig) -> float:
    """Seconds between two probes of one of the domain's MX hosts: they are probed after every
    check and at every mx_interval in between (domain_scheduler.py)."""
    return min(domain.mx_interval, domain.interval)


def _base(domain: DomainConfig) -> dict[str, str]:
    return {**dict(domain.labels), "domain": domain.name}


def add_domain_config_samples(families: Families, domain: DomainConfig) -> None:
    """The series of the domain's config: there from the moment it is configured."""
    families["smtp_tls_domain_check_interval_seconds"].put(
        _base(domain), NO_LABELS, domain.interval
    )


def add_domain_samples(families: Families, domain: DomainConfig, r: DomainResult) -> None:
    base = _base(domain)

    def add(name: str, value: float, **extra: str) -> None:
        families[name].put(base, extra, value)

    sts = r.sts
    for state in StsState:
        add("smtp_tls_mta_sts_mode", state is sts.state, mode=state.value)
    add("smtp_tls_mta_sts_record_present", sts.record_present)
    add("smtp_tls_mta_sts_policy_valid", sts.policy_valid)
    if sts.failure is not None:
        add("smtp_tls_mta_sts_policy_fetch_failure_info", 1, reason=str(sts.failure.reason))
    if sts.policy is not None:
        add("smtp_tls_mta_sts_max_age_seconds", sts.policy.max_age)
    if sts.record is not None:
        add("smtp_tls_mta_sts_policy_id_info", 1, id=sts.record.id)
    for c in r.mx_checks:
        if c.policy_match is not None:
            add("smtp_tls_mta_sts_mx_match", c.policy_match, mx=c.name)
        if c.compliant is not None:
            add("smtp_tls_mta_sts_mx_compliant", c.compliant, mx=c.name)
    add("smtp_tls_tlsrpt_record_present", r.tlsrpt.record_present)
    add("smtp_tls_tlsrpt_record_valid", r.tlsrpt.valid)
    if r.mx.status is not MxStatus.ERROR:
        add("smtp_tls_mx_count", len(r.mx.hosts))
    add("smtp_tls_mx_lookup_info", 1, status=str(r.mx.status))
    add("smtp_tls_domain_last_check_timestamp_seconds", r.started_at)
