"""A probe with its DANE check: the TLSA lookup beside the probe, the verdict on what it was served.

The probe itself looks up no TLSA record; `probe_with_dane` runs the lookup in a task of its own
while the probe runs, then judges each chain the probe was served (one per address with
all_addresses) against that one answer, and returns the probe's result with `dane` set. The
lookup is bounded by `dane.timeout` and by the target's own timeout, so a DANE check never makes
a probe take longer than its timeout allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from exporter.dane.check import verdict
from exporter.dane.config import DANE_PORT, DaneConfig
from exporter.dane.lookup import DaneDns, tlsa_name
from exporter.dane.model import LookupStatus, TlsaAnswer
from exporter.model import ProbeResult, Target

ProbeFn = Callable[[Target], Awaitable[ProbeResult]]

# Seconds past its own deadline before a TLSA lookup that ignores it is given up (`timeout`).
LOOKUP_GRACE = 1.0


def wants_dane(target: Target, config: DaneConfig) -> bool:
    return target.dane and bool(config.nameservers)


async def probe_with_dane(target: Target, probe_fn: ProbeFn, config: DaneConfig) -> ProbeResult:
    """`probe_fn(target)`, with the DANE check of its served chain(s) in `dane` when the target
    asks for DANE and `config` names name servers; else the probe alone. A probe that raises
    or is cancelled takes the lookup with it."""
    if not wants_dane(target, config):
        return await probe_fn(target)
    started_at = time.time()
    lookup = asyncio.create_task(_lookup(target, config), name=f"TLSA {target.host}")
    try:
        result = await probe_fn(target)
        answer, seconds = await lookup
    finally:
        if not lookup.done():
            lookup.cancel()
            await asyncio.wait([lookup])
    return with_dane(result, target, answer, started_at=started_at, duration=seconds)


def with_dane(
    result: ProbeResult,
    target: Target,
    answer: TlsaAnswer | Exception,
    *,
    started_at: float | None = None,
    duration: float = 0.0,
) -> ProbeResult:
    """`result` with the verdict on its chain from `answer` (for `target.host`), or on each
    address's chain with all_addresses."""

    def judged(one: ProbeResult) -> ProbeResult:
        dane = verdict(
            target.host,
            answer,
            one,
            port=DANE_PORT,
            extra_names=target.dane_names,
            started_at=started_at,
            duration=duration,
        )
        return dataclasses.replace(one, dane=dane)

    if result.addresses:
        return dataclasses.replace(result, addresses=tuple(map(judged, result.addresses)))
    return judged(result)


async def _lookup(target: Target, config: DaneConfig) -> tuple[TlsaAnswer | Exception, float]:
    timeout = min(config.timeout, target.timeout)
    dns = DaneDns(config.nameservers, timeout, cd_retry=config.cd_retry)
    started = time.monotonic()
    answer: TlsaAnswer | Exception
    limit = asyncio.timeout(timeout + LOOKUP_GRACE)
    try:
        async with limit:
            answer = await dns.tlsa(target.host, DANE_PORT)
    except TimeoutError as exc:
        if not limit.expired():
            answer = exc  # not ours: a bug, reported as internal_error
        else:
            name = tlsa_name(target.host, DANE_PORT)
            detail = f"{name}: the lookup ignored its {timeout:g}s deadline"
            answer = TlsaAnswer(name, LookupStatus.TIMEOUT, False, detail=detail)
    except Exception as exc:
        answer = exc
    return answer, time.monotonic() - started
