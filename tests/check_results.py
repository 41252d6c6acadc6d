"""Hand-built results of all_addresses probes and of the opt-in checks, for collector tests."""

from __future__ import annotations

import dataclasses

from exporter.checks.model import CheckName, CheckRun
from exporter.model import Checks, Failure, Phases, ProbeResult, Reason, Stage, Target

NOW = 1_760_000_000.0  # as tests/test_collector.py

POOL = Target.create(
    "mx.example.test",
    25,
    server_name="mx.example.test",
    all_addresses=True,
    checks=Checks(starttls_injection=True, protocols=True),
)
V4, V6, GONE = "192.0.2.25", "2001:db8::25", "192.0.2.26"


def at(result: ProbeResult, address: str, family: str) -> ProbeResult:
    """`result` as the probe of one address of its (all_addresses) target."""
    target = dataclasses.replace(result.target, address=address)
    return dataclasses.replace(result, target=target, peer_address=address, address_family=family)


def refused(target: Target, address: str, family: str) -> ProbeResult:
    return ProbeResult(
        target=dataclasses.replace(target, address=address),
        started_at=NOW - 10,
        success=False,
        failure=Failure(Stage.CONNECT, Reason.CONNECTION_REFUSED, f"{address}: refused"),
        peer_address=address,
        address_family=family,
        phases=Phases(resolve=0.001, connect=0.0002, total=0.0013),
    )


def pooled(target: Target, addresses: tuple[ProbeResult, ...]) -> ProbeResult:
    """The summed-up result of an all_addresses target."""
    failed = [r for r in addresses if not r.success]
    return ProbeResult(
        target=target,
        started_at=NOW - 10,
        success=not failed,
        failure=failed[0].failure if failed else None,
        phases=Phases(resolve=0.001, total=0.03),
        addresses=addresses,
    )


def injection(vulnerable: bool) -> CheckRun:
    return CheckRun(CheckName.STARTTLS_INJECTION, NOW - 3600, 2.01, verdict=vulnerable)


def protocols(*accepted: bool) -> CheckRun:
    versions = ("TLS 1.0", "TLS 1.1", "TLS 1.2")
    return CheckRun(
        CheckName.PROTOCOLS, NOW - 3600, 0.05, accepted=tuple(zip(versions, accepted, strict=True))
    )


def submission(requires: bool | None) -> CheckRun:
    failure = (
        None
        if requires is not None
        else Failure(Stage.MAIL_FROM, Reason.TIMEOUT, "no answer to MAIL FROM")
    )
    return CheckRun(
        CheckName.SUBMISSION_REQUIRES_TLS, NOW - 3600, 0.01, verdict=requires, failure=failure
    )


def failed(check: CheckName) -> CheckRun:
    """A run that reached no verdict: the address refused the connection."""
    failure = Failure(Stage.CONNECT, Reason.CONNECTION_REFUSED, "refused")
    return CheckRun(check, NOW - 3600, 0.001, failure=failure)
