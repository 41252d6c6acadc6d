"""`all_addresses`: every A and AAAA of a target's host probed on its own, one result for each.

One bad node behind a name is the usual failure, and a probe that takes the first address that
answers never sees it (blackbox_exporter #473, #1378). The host is looked up at every probe, so an
address that leaves DNS leaves the results, and its series leave with it. The probes run at once,
each within what the lookup left of the target's timeout. At most MAX_ADDRESSES addresses are
probed, the first ones of the answer: that bounds the connections and the series of one target
whatever a zone publishes (the cardinality concern of blackbox_exporter #740 and PR #1502).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Awaitable
from typing import Protocol

from exporter.model import (
    Failure,
    Phases,
    ProbeResult,
    Reason,
    Stage,
    Target,
    Transcript,
    TranscriptEntry,
)
from exporter.resolve import Addresses, ResolveError, Resolver, literal

MAX_ADDRESSES = 16


class ProbeOne(Protocol):
    """exporter.probe.probe: one probe of a target pinned to one address."""

    def __call__(
        self, target: Target, *, resolver: Resolver | None = None, timeout: float | None = None
    ) -> Awaitable[ProbeResult]: ...


def family_name(family: socket.AddressFamily) -> str:
    return "ipv6" if family == socket.AF_INET6 else "ipv4"


async def probe_each_address(
    target: Target, resolver: Resolver, probe_one: ProbeOne
) -> ProbeResult:
    """Look `target.host` up, probe every address (up to MAX_ADDRESSES), and sum the results up:
    a success only if every address succeeded; else the first failure, its detail naming the
    address. A lookup that fails is the only failure and there are no per-address results."""
    started_wall, started = time.time(), time.monotonic()
    failure: Failure | None = None
    try:
        async with asyncio.timeout(target.timeout):
            found = await _lookup(target, resolver)
    except TimeoutError:
        detail = f"no answer within the {target.timeout:g}s deadline during resolve"
        failure = Failure(Stage.RESOLVE, Reason.TIMEOUT, detail)
    except ResolveError as exc:
        reason = Reason.TIMEOUT if exc.timeout else Reason.NAME_NOT_RESOLVED
        failure = Failure(Stage.RESOLVE, reason, str(exc))
    looked_up = time.monotonic() - started
    if failure is not None:
        return ProbeResult(
            target=target,
            started_at=started_wall,
            success=False,
            failure=failure,
            phases=Phases(resolve=looked_up, total=looked_up),
            transcript=Transcript([TranscriptEntry(looked_up, "info", failure.detail)]),
        )
    picked = found[:MAX_ADDRESSES]
    remaining = max(target.timeout - looked_up, 0.0)
    results = await asyncio.gather(
        *(
            probe_one(dataclasses.replace(target, address=address), timeout=remaining)
            for _, address in picked
        )
    )
    per_address = tuple(_with_lookup(r, looked_up) for r in results)
    transcript = [
        TranscriptEntry(
            looked_up,
            "info",
            f"{target.host}: {len(found)} addresses"
            + (f", the first {MAX_ADDRESSES} probed" if len(found) > MAX_ADDRESSES else "")
            + f": {', '.join(address for _, address in found)}",
        )
    ]
    failed = [r for r in per_address if not r.success]
    for r in per_address:
        outcome = "ok" if r.failure is None else f"{r.failure.stage}: {r.failure.reason}"
        transcript.append(TranscriptEntry(0.0, "info", f"-- {r.peer_address}: {outcome}"))
        transcript.extend(r.transcript)
    first = failed[0].failure if failed else None
    return ProbeResult(
        target=target,
        started_at=started_wall,
        success=not failed,
        failure=None
        if first is None
        else dataclasses.replace(
            first,
            detail=f"{failed[0].peer_address} ({len(failed)} of {len(per_address)} addresses "
            f"failed): {first.detail}",
        ),
        phases=Phases(resolve=looked_up, total=time.monotonic() - started),
        transcript=Transcript(transcript),
        addresses=per_address,
    )


async def _lookup(target: Target, resolver: Resolver) -> Addresses:
    found = literal(target.host)
    if found is None:
        found = await resolver(target.host, target.port)
    if not found:
        raise ResolveError(f"{target.host}: no address")
    return found


def _with_lookup(result: ProbeResult, looked_up: float) -> ProbeResult:
    """A per-address result with the shared lookup as its resolve phase, as a probe of one
    address would have it, and the address it was pinned to even when it could not connect."""
    phases = dataclasses.replace(
        result.phases, resolve=looked_up, total=result.phases.total + looked_up
    )
    address = result.peer_address or result.target.address
    family = result.address_family
    if family is None and address is not None:
        found = literal(address)
        family = family_name(found[0][0]) if found else None
    return dataclasses.replace(result, phases=phases, peer_address=address, address_family=family)
