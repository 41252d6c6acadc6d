"""Presentation of check runs, for the `probe --check` command: text for a person, and JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from exporter.checks.model import CheckRun

# (address the checks connected to, None: the host's first that answered), and their runs
CheckReport = list[tuple[str | None, tuple[CheckRun, ...]]]

_VERDICTS = {
    "starttls_injection": ("VULNERABLE: the NOOP sent before TLS was answered inside it", "ok"),
    "submission_requires_tls": ("yes", "NO: mail or AUTH accepted before STARTTLS"),
}


def render_checks(report: CheckReport) -> str:
    out = ["Checks"]
    for address, runs in report:
        if address is not None:
            out.append(f"  at {address}")
        for run in runs:
            out.append(f"  {run.check}: {_outcome(run)}")
            for e in run.transcript:
                out.append(f"    {e.at:8.4f} {e.kind:<5}{e.text.splitlines()[0] if e.text else ''}")
    return "\n".join(out)


def _outcome(run: CheckRun) -> str:
    if run.accepted:
        shown = ", ".join(f"{v} {'accepted' if ok else 'refused'}" for v, ok in run.accepted)
    elif run.verdict is not None:
        yes, no = _VERDICTS[str(run.check)]
        shown = yes if run.verdict else no
    else:
        shown = ""
    if run.failure is not None:
        f = run.failure
        shown += f"{'; ' if shown else ''}no verdict: {f.stage}: {f.reason}: {f.detail}"
    return shown


def checks_json(report: CheckReport) -> list[dict[str, Any]]:
    return [
        {
            "address": address,
            "check": str(run.check),
            "verdict": run.verdict,
            "accepted": dict(run.accepted),
            "stage": str(run.failure.stage) if run.failure else None,
            "reason": str(run.failure.reason) if run.failure else None,
            "detail": run.failure.detail if run.failure else None,
            "started_at": run.started_at,
            "duration": run.duration,
            "transcript": [dataclasses.asdict(e) for e in run.transcript],
        }
        for address, runs in report
        for run in runs
    ]
