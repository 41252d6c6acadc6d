"""Running the checks a target enables, at one address: each dialogue within the target's timeout,
one after the other (one connection at a time to a server), each outcome a CheckRun."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from exporter.checks.dialogues import INJECTION_WAIT, CheckDialogue, Injection, Protocol, Submission
from exporter.checks.model import CheckName, CheckRun
from exporter.model import Failure, Mode, Reason, Stage, Target, Transcript, TranscriptEntry
from exporter.probe import _Stop
from exporter.resolve import Resolver, system_resolve
from exporter.tls.session import PINNED_VERSIONS, VersionUnavailable

log = logging.getLogger(__name__)


def enabled_checks(target: Target) -> tuple[CheckName, ...]:
    """The checks `target` asks for that apply to its mode: an implicit TLS port has no
    STARTTLS to inject into, and no plaintext phase to require TLS in."""
    c, starttls = target.checks, target.mode is Mode.STARTTLS
    wanted = (
        (CheckName.STARTTLS_INJECTION, c.starttls_injection and starttls),
        (CheckName.PROTOCOLS, c.protocols),
        (CheckName.SUBMISSION_REQUIRES_TLS, c.submission_requires_tls and starttls),
    )
    return tuple(name for name, on in wanted if on)


async def run_checks(
    target: Target,
    address: str | None,
    *,
    resolver: Resolver | None = None,
    injection_wait: float = INJECTION_WAIT,
) -> tuple[CheckRun, ...]:
    """Every check `target` enables, at `address` (None: the host's first address that
    answers, as the probe would), one after the other."""
    pinned = dataclasses.replace(target, address=address, all_addresses=False)
    resolve = resolver or system_resolve
    runs = []
    for name in enabled_checks(target):
        if name is CheckName.PROTOCOLS:
            runs.append(await _protocols(pinned, resolve))
            continue
        started = time.time()
        if name is CheckName.STARTTLS_INJECTION:
            injection = Injection(pinned, resolve, pinned.timeout)
            step = functools.partial(injection.vulnerable, injection_wait)
            verdict, failure, transcript = await _dialogue(injection, step)
        else:
            submission = Submission(pinned, resolve, pinned.timeout)
            verdict, failure, transcript = await _dialogue(submission, submission.requires_tls)
        runs.append(
            CheckRun(name, started, time.time() - started, verdict, (), failure, transcript)
        )
        _log(pinned, runs[-1])
    return tuple(runs)


async def _protocols(target: Target, resolve: Resolver) -> CheckRun:
    started = time.time()
    accepted: list[tuple[str, bool]] = []
    first_failure: Failure | None = None
    transcript: list[TranscriptEntry] = []
    for version in PINNED_VERSIONS:
        dialogue = Protocol(target, resolve, target.timeout)
        step = functools.partial(dialogue.accepts, version)
        verdict, failure, entries = await _dialogue(dialogue, step)
        transcript.append(TranscriptEntry(0.0, "info", f"-- handshake offering {version} only"))
        transcript.extend(entries)
        if verdict is not None:
            accepted.append((version, verdict))
        elif first_failure is None and failure is not None:
            first_failure = dataclasses.replace(failure, detail=f"{version}: {failure.detail}")
    run = CheckRun(
        CheckName.PROTOCOLS,
        started,
        time.time() - started,
        None,
        tuple(accepted),
        first_failure,
        Transcript(transcript),
    )
    _log(target, run)
    return run


async def _dialogue(
    dialogue: CheckDialogue, step: Callable[[], Awaitable[bool]]
) -> tuple[bool | None, Failure | None, Transcript]:
    """Run one check dialogue as the probe runs its own: within its timeout, every failure
    caught once; then QUIT when the connection can still carry it. (verdict, failure, transcript)"""
    verdict: bool | None = None
    try:
        async with asyncio.timeout(dialogue.timeout):
            verdict = await step()
    except TimeoutError:
        dialogue.fail(Reason.TIMEOUT, dialogue.timeout_detail())
    except _Stop as stop:
        dialogue.fail(stop.reason, stop.detail)
    except VersionUnavailable as exc:
        dialogue.stage = Stage.TLS_HANDSHAKE
        dialogue.fail(Reason.INTERNAL_ERROR, str(exc))
    except Exception as exc:
        log.exception("internal error in a check of %s", dialogue.target.name)
        dialogue.stage = Stage.INTERNAL
        dialogue.fail(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        dialogue.abort()
        raise
    if dialogue.failure is None and not dialogue.close_only:
        await dialogue.quit()
    else:
        dialogue.abort()
    transcript = Transcript.of_rows(dialogue.conn.transcript if dialogue.conn is not None else ())
    return (None if dialogue.failure else verdict), dialogue.failure, transcript


def _log(target: Target, run: CheckRun) -> None:
    fields: dict[str, object] = {
        "target": target.name,
        "address": target.address or "",
        "check": str(run.check),
        "duration": round(run.duration, 4),
    }
    if run.verdict is not None:
        fields["verdict"] = run.verdict
    if run.accepted:
        fields["accepted"] = ",".join(v for v, ok in run.accepted if ok) or "none"
    if run.failure is not None:
        f = run.failure
        fields.update(stage=str(f.stage), reason=str(f.reason), detail=f.detail)
        log.warning("check without a verdict", extra=fields)
    else:
        log.debug("check done", extra=fields)
    if run.transcript and log.isEnabledFor(logging.DEBUG):
        lines = [f"{e.at:8.4f} {e.kind:<4} {e.text}" for e in run.transcript]
        log.debug("check transcript", extra={**fields, "transcript": "\n".join(lines)})
