"""Plain frozen data of the opt-in checks: which check, and one run's verdict or why it has none."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from exporter.model import EMPTY_TRANSCRIPT, Failure, Transcript


class CheckName(enum.StrEnum):
    """The checks, as the `check` label spells them. docs/checks.md describes each."""

    STARTTLS_INJECTION = "starttls_injection"
    PROTOCOLS = "protocols"
    SUBMISSION_REQUIRES_TLS = "submission_requires_tls"


@dataclass(frozen=True)
class CheckRun:
    """One run of one check against one address."""

    check: CheckName
    started_at: float  # unix seconds
    duration: float  # seconds
    # starttls_injection: the server is vulnerable; submission_requires_tls: it requires TLS.
    # None: no verdict (see failure), and always for protocols.
    verdict: bool | None = None
    # protocols: (version, accepted) for each version that got a verdict, as "TLS 1.0".
    accepted: tuple[tuple[str, bool], ...] = ()
    # Why a verdict is missing; for protocols the first version without one.
    failure: Failure | None = None
    transcript: Transcript = EMPTY_TRANSCRIPT
