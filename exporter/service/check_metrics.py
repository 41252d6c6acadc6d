"""The metric families of the opt-in checks, built by the collector from their latest runs.

Check series are per-endpoint series (the endpoint labels, and `address` and `ip_family` for a
target with all_addresses); their values come from the checks' last run, which is rarer than the
probe (`checks.interval`, default 1d). A check that could not reach a verdict has no value series
but a failure series, until its next run. For a STARTTLS target with every check enabled:

    smtp_tls_starttls_injection_vulnerable{...} 0.0
    smtp_tls_protocol_accepted{...,version="TLS 1.0"} 1.0
    smtp_tls_protocol_accepted{...,version="TLS 1.1"} 1.0
    smtp_tls_protocol_accepted{...,version="TLS 1.2"} 1.0
    smtp_tls_submission_requires_tls{...} 1.0
    smtp_tls_check_last_run_timestamp_seconds{...,check="protocols"} 1.76e+09

docs/metrics.md describes every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from exporter.checks.model import CheckName, CheckRun

_FROM_CHECK = "from the last run of the check"

CHECK_HELP = {
    "smtp_tls_starttls_injection_vulnerable": (
        "1 if the server answered, inside TLS, a NOOP sent in plaintext in the same write as "
        f"STARTTLS (RFC 3207 section 4.2, CVE-2011-0411), 0 if not ({_FROM_CHECK})."
    ),
    "smtp_tls_protocol_accepted": (
        "1 if the server completed a TLS handshake that offered only this version, 0 if it "
        f"refused it ({_FROM_CHECK})."
    ),
    "smtp_tls_submission_requires_tls": (
        "1 if the server offered no AUTH before TLS and refused MAIL FROM before STARTTLS with "
        f"530 (5.7.0), 0 if not (RFC 8314) ({_FROM_CHECK})."
    ),
    "smtp_tls_check_failure_info": (
        "1 while the last run of the check reached no verdict: where its dialogue stopped and "
        "why; absent after a run with a verdict."
    ),
    "smtp_tls_check_last_run_timestamp_seconds": "Unix time at which the check last ran.",
}

Add = Callable[..., None]  # add(name, value, **labels), the collector's per-endpoint sample adder


def add_check_samples(add: Add, runs: Iterable[CheckRun]) -> None:
    for run in runs:
        add("smtp_tls_check_last_run_timestamp_seconds", run.started_at, check=str(run.check))
        if run.failure is not None:
            f = run.failure
            add(
                "smtp_tls_check_failure_info",
                1,
                check=str(run.check),
                stage=str(f.stage),
                reason=str(f.reason),
            )
        if run.check is CheckName.PROTOCOLS:
            for version, accepted in run.accepted:
                add("smtp_tls_protocol_accepted", accepted, version=version)
        elif run.verdict is not None:
            name = (
                "smtp_tls_starttls_injection_vulnerable"
                if run.check is CheckName.STARTTLS_INJECTION
                else "smtp_tls_submission_requires_tls"
            )
            add(name, run.verdict)
