"""The one place the series of probe results are built: the latest results, as metric families.

`/metrics` does not call `collect()`: it serves the cached exposition (exposition.py), which
renders each target's (and each domain's) series with this module's builders,
`add_target_samples` and `add_domain_block`, and the exporter's own with `exporter_families`.
`collect()` assembles the same whole, for an on-demand `/probe` answer (`on_demand`, endpoint
families only) and as the reference the cached exposition is tested against.

`collect()` takes a snapshot of the service state and turns it into families; it never does I/O
and never waits on a probe. The values come from the last scheduled probe of each target, so no
sample carries a timestamp; `smtp_tls_last_probe_timestamp_seconds` says how old they are, and
`smtp_tls_probe_interval_seconds` how old they may be. A target that is configured but not yet
probed has only the series of its config (interval, verify policy); a removed target's series
are gone at the next scrape. For one STARTTLS target the exposition looks like:

    smtp_tls_probe_success{host="localhost",mode="starttls",port="25",target="localhost:25"} 1.0
    smtp_tls_probe_interval_seconds{...} 60.0
    smtp_tls_probe_duration_seconds{...,phase="connect",...} 0.0004
    smtp_tls_version_info{...,version="TLS 1.3"} 1.0
    smtp_tls_starttls_advertised{...} 1.0
    smtp_tls_cert_expiry_days{...} 61.2

Mail domains add their own families (domain_metrics.py) and, for each MX host probed, the
per-endpoint series with the labels `domain` and `mx_preference`. docs/metrics.md describes every
metric; a test checks that it and these modules agree.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.checks.model import CheckRun
from exporter.domains.config import DomainConfig
from exporter.domains.model import DomainResult
from exporter.model import Mode, ProbeResult, Target, VerifyPolicy
from exporter.service.check_metrics import CHECK_HELP, add_check_samples
from exporter.service.dane_metrics import DANE_HELP, add_dane_samples
from exporter.service.domain_metrics import (
    add_domain_config_samples,
    add_domain_samples,
    domain_families,
    mx_probe_interval,
)
from exporter.service.families import NO_LABELS, Families, Family
from exporter.service.state import CheckResults, Snapshot

_FROM_PROBE = "from the last scheduled probe"

# Per-endpoint gauges: name -> HELP. Families are emitted in this order.
_ENDPOINT_HELP = {
    "smtp_tls_probe_success": f"1 if the probe succeeded, 0 if it failed ({_FROM_PROBE}).",
    "smtp_tls_probe_failure_info": (
        f"1 while the last probe failed: where it stopped and why ({_FROM_PROBE}); "
        "absent after a success."
    ),
    "smtp_tls_probe_duration_seconds": f"Seconds spent in each phase of the probe ({_FROM_PROBE}).",
    "smtp_tls_last_probe_timestamp_seconds": "Unix time at which the last scheduled probe started.",
    "smtp_tls_probe_interval_seconds": (
        "Seconds between scheduled probes of the target, from the config (an MX host: its "
        "domain's mx_interval, or interval if shorter); present from the moment the target is "
        "configured."
    ),
    "smtp_tls_version_info": f"The negotiated TLS version, as the version label ({_FROM_PROBE}).",
    "smtp_tls_cipher_info": f"The negotiated cipher suite, as the cipher label ({_FROM_PROBE}).",
    "smtp_tls_starttls_advertised": (
        f"1 if the server offered STARTTLS in its EHLO reply, 0 if not ({_FROM_PROBE})."
    ),
    "smtp_tls_auth_before_tls": (
        f"1 if the server offered AUTH before TLS was established, 0 if not ({_FROM_PROBE})."
    ),
    "smtp_tls_plaintext_after_starttls": (
        "1 if the server sent bytes after its reply to STARTTLS and before the TLS handshake "
        f"(discarded, RFC 3207 section 4.2), 0 if not ({_FROM_PROBE})."
    ),
    "smtp_tls_cert_not_after_timestamp_seconds": (
        f"Unix time at which the leaf certificate expires ({_FROM_PROBE})."
    ),
    "smtp_tls_cert_not_before_timestamp_seconds": (
        f"Unix time from which the leaf certificate is valid ({_FROM_PROBE})."
    ),
    "smtp_tls_cert_expiry_days": (
        "Days until the leaf certificate expires, negative once expired; computed at scrape time "
        "from the certificate seen by the last scheduled probe."
    ),
    "smtp_tls_chain_earliest_not_after_timestamp_seconds": (
        f"Unix time at which the first certificate of the served chain expires ({_FROM_PROBE})."
    ),
    "smtp_tls_cert_trusted": (
        f"1 if the served chain verifies against the trust store, 0 if not ({_FROM_PROBE})."
    ),
    "smtp_tls_cert_hostname_match": (
        "1 if the leaf certificate is valid for the target's server name, 0 if not "
        f"({_FROM_PROBE})."
    ),
    "smtp_tls_cert_verify_info": (
        f"Outcome of certificate verification: ok or the first problem found ({_FROM_PROBE})."
    ),
    "smtp_tls_cert_info": f"Identity of the leaf certificate ({_FROM_PROBE}).",
    "smtp_tls_cert_verify_required": (
        "1 if the target's config requires a verified certificate (verify: required, a "
        "certificate problem fails the probe), 0 if problems are only reported (verify: report); "
        "present from the moment the target is configured."
    ),
}


class SmtpTlsCollector(Collector):
    """Builds every family afresh per scrape from `snapshot()`; `clock` gives the scrape time."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        clock: Callable[[], float] = time.time,
        *,
        on_demand: bool = False,
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock
        # For a /probe answer: the endpoint families only, and HELP texts that say so.
        self._on_demand = on_demand

    def describe(self) -> list[Metric]:
        # Nothing to declare up front: registering must not call collect() (and so the state).
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        now = self._clock()
        if not self._on_demand:
            yield from exporter_families(snap)
        families = endpoint_families(self._on_demand)
        for target in snap.targets:
            add_target_samples(
                families,
                target,
                snap.results.get(target.name),
                snap.checks.get(target),
                now,
                self._on_demand,
            )
        domains = domain_families()
        for domain in snap.domains:
            add_domain_block(
                families, domains, domain, snap.domain_results.get(domain.name), snap.checks, now
            )
        yield from (f for f in families.values() if f.samples)
        yield from (f for f in domains.values() if f.samples)


def endpoint_families(on_demand: bool = False) -> dict[str, Family]:
    """The per-endpoint families, empty, in the order they are exposed."""
    return {
        name: Family(name, _help(text, on_demand))
        for name, text in (_ENDPOINT_HELP | CHECK_HELP | DANE_HELP).items()
    }


def add_target_samples(
    families: Families,
    target: Target,
    result: ProbeResult | None,
    checks: CheckResults | None,
    now: float,
    on_demand: bool = False,
) -> None:
    """A configured target's series: those of its config, and of its latest result if any."""
    # A result of an earlier definition of a target with this name (changed by a reload)
    # describes something no longer configured: only its config until the next probe.
    if result is not None and result.target != target:
        result = None
    _config_samples(families, target, target.interval, result, on_demand)
    if result is not None:
        _endpoint_samples(families, result, now, checks)


def add_domain_block(
    families: Families,
    domains: Families,
    domain: DomainConfig,
    checked: DomainResult | None,
    checks: Mapping[Target, CheckResults],
    now: float,
) -> None:
    """A mail domain's series (into `domains`) and those of its MX hosts' probes (`families`)."""
    add_domain_config_samples(domains, domain)
    if checked is None:
        return
    add_domain_samples(domains, domain, checked)
    # A domain's MX probes are endpoints too; the MX set is the latest check's, so an MX host
    # that left it has no series any more.
    for mx in checked.mx_checks:
        if mx.probe is not None:
            interval = mx_probe_interval(domain)
            _config_samples(families, mx.probe.target, interval, mx.probe)
            _endpoint_samples(families, mx.probe, now, checks.get(mx.probe.target))


def _config_samples(
    families: Families,
    target: Target,
    interval: float,
    result: ProbeResult | None,
    on_demand: bool = False,
) -> None:
    # Like every per-endpoint series, once per address of an all_addresses target (those of
    # its latest probe), so that rules can match them label for label.
    for where in _addresses(result):
        labels = {**_endpoint_labels(target), **where}
        if not on_demand:  # an on-demand probe has no schedule
            families["smtp_tls_probe_interval_seconds"].put(labels, NO_LABELS, interval)
        required = target.verify is VerifyPolicy.REQUIRED
        families["smtp_tls_cert_verify_required"].put(labels, NO_LABELS, required)


def _help(text: str, on_demand: bool) -> str:
    if not on_demand:
        return text
    return text.replace(_FROM_PROBE, "from this on-demand probe").replace(
        "the last scheduled probe", "this on-demand probe"
    )


def exporter_families(snap: Snapshot) -> Iterator[Metric]:
    build = GaugeMetricFamily(
        "smtp_tls_exporter_build_info",
        "The exporter's version and the Python running it; always 1.",
        labels=["version", "python_version"],
    )
    build.add_metric([__version__, platform.python_version()], 1)
    yield build
    yield GaugeMetricFamily(
        "smtp_tls_exporter_config_last_reload_successful",
        "1 if the last attempt to load the config succeeded, 0 if it failed (the previous "
        "config stays in use).",
        value=int(snap.reload_success),
    )
    if snap.reload_success_timestamp is not None:
        yield GaugeMetricFamily(
            "smtp_tls_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            value=snap.reload_success_timestamp,
        )
    probes = CounterMetricFamily(
        "smtp_tls_exporter_probes",
        "Scheduled probes run since the exporter started (MX probes of mail domains included), "
        "by result.",
        labels=["result"],
    )
    for result in ("success", "failure"):
        probes.add_metric([result], snap.probes_total.get(result, 0))
    yield probes
    yield GaugeMetricFamily(
        "smtp_tls_exporter_targets",
        "Targets this exporter probes: those in the config, or its shard's (--shard.count).",
        value=len(snap.targets),
    )
    yield GaugeMetricFamily(
        "smtp_tls_exporter_domains",
        "Mail domains this exporter checks: those in the config, or its shard's.",
        value=len(snap.domains),
    )
    yield GaugeMetricFamily(
        "smtp_tls_exporter_scheduler_lag_seconds",
        "How many seconds after its scheduled time the latest probe started.",
        value=snap.scheduler_lag_seconds,
    )
    yield GaugeMetricFamily(
        "smtp_tls_exporter_scheduler_lag_max_seconds",
        "The largest scheduler lag seen since the exporter started, in seconds.",
        value=snap.scheduler_lag_max_seconds,
    )


def _endpoint_labels(target: Target) -> dict[str, str]:
    """The labels of every per-endpoint series: the target's static labels, then its identity."""
    return {
        **dict(target.labels),
        "target": target.name,
        "host": target.host,
        "port": str(target.port),
        "mode": str(target.mode),
    }


def _address_labels(r: ProbeResult) -> dict[str, str]:
    return {"address": r.peer_address or "", "ip_family": r.address_family or ""}


def _addresses(result: ProbeResult | None) -> list[dict[str, str]]:
    """The extra labels of a target's series: one set per address probed (all_addresses), or
    none at all."""
    if result is None or not result.addresses:
        return [{}]
    return [_address_labels(one) for one in result.addresses]


def _endpoint_samples(
    families: Families,
    r: ProbeResult,
    now: float,
    checks: CheckResults | None = None,
) -> None:
    """The series of one probe result, and of its checks' latest runs. A target with
    all_addresses has them for each address probed, labelled `address` and `ip_family`."""
    if not r.addresses:
        _one_endpoint(families, r, now, {}, (checks or {}).get(None, ()))
    for one in r.addresses:
        where = _address_labels(one)
        _one_endpoint(families, one, now, where, (checks or {}).get(one.peer_address, ()))


def _one_endpoint(
    families: Families,
    r: ProbeResult,
    now: float,
    where: dict[str, str],
    check_runs: tuple[CheckRun, ...],
) -> None:
    base = {**_endpoint_labels(r.target), **where}

    def add(name: str, value: float, **extra: str) -> None:
        families[name].put(base, extra, value)

    starttls = r.target.mode == Mode.STARTTLS
    add("smtp_tls_probe_success", r.success)
    if not r.success and r.failure is not None:
        add(
            "smtp_tls_probe_failure_info",
            1,
            stage=str(r.failure.stage),
            reason=str(r.failure.reason),
        )
    for phase, seconds in r.phases.items():
        add("smtp_tls_probe_duration_seconds", seconds, phase=phase)
    add("smtp_tls_last_probe_timestamp_seconds", r.started_at)
    if r.tls is not None:
        add("smtp_tls_version_info", 1, version=r.tls.version)
        add("smtp_tls_cipher_info", 1, cipher=r.tls.cipher)
    # Facts learnt from the EHLO before TLS exist only for STARTTLS targets that got that far.
    if starttls and r.smtp.starttls_advertised is not None:
        add("smtp_tls_starttls_advertised", r.smtp.starttls_advertised)
        add("smtp_tls_auth_before_tls", bool(r.smtp.auth_before_tls))
    if starttls and r.tls is not None:
        add("smtp_tls_plaintext_after_starttls", r.smtp.plaintext_after_starttls)
    # Certificate series whenever a certificate was seen: a broken certificate is exactly when
    # they matter (blackbox_exporter #1119, ssl_exporter #37).
    cert = r.certificate
    if cert is not None:
        add("smtp_tls_cert_not_after_timestamp_seconds", cert.not_after)
        add("smtp_tls_cert_not_before_timestamp_seconds", cert.not_before)
        add("smtp_tls_cert_expiry_days", cert.days_until_expiry(now))
        add(
            "smtp_tls_cert_info",
            1,
            subject=cert.subject,
            issuer=cert.issuer,
            serial=cert.serial,
            fingerprint_sha256=cert.fingerprint_sha256,
            key_type=cert.key_type,
            key_bits="" if cert.key_bits is None else str(cert.key_bits),
            signature_algorithm=cert.signature_algorithm,
        )
    earliest = r.chain_earliest_not_after
    if earliest is not None:
        add("smtp_tls_chain_earliest_not_after_timestamp_seconds", earliest)
    v = r.verification
    if v is not None:
        add("smtp_tls_cert_trusted", v.trusted)
        add("smtp_tls_cert_hostname_match", v.hostname_match)
        add("smtp_tls_cert_verify_info", 1, reason=str(v.reason))
    add_check_samples(add, check_runs)
    add_dane_samples(add, r.dane)
