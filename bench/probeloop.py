"""In-process micro-benchmark of the probe path: `exporter.probe.probe` (plus the scheduler's
`log_result`) against the scripted server, without the service, the scheduler or /metrics.

    python bench/probeloop.py [--mode starttls|implicit_tls] [--loop asyncio|uvloop]
                              [--rate R | --concurrency C] [--seconds S] [--profile FILE]

`--rate R` starts R probes per second in groups every `--tick` seconds (0.25: the scheduler's
shared tick; 0: each probe at its own moment, evenly spread); without it, C probes run at once
back to back (saturated). Prints the process's CPU (user + system, every thread) per completed
probe. Loopback only: the server listens on
127.B.x.y (`--subnet`, default 81). `--profile FILE` writes a cProfile of the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import peers  # noqa: E402
from bench.peers import ScriptedServer  # noqa: E402
from exporter.model import Mode, ProbeResult, Target  # noqa: E402
from exporter.probe import probe  # noqa: E402
from exporter.service.scheduler import log_result  # noqa: E402
from tests.fixtures.certs import SERVER_NAME  # noqa: E402


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _saturated(targets: list[Target], concurrency: int, seconds: float) -> list[ProbeResult]:
    results: list[ProbeResult] = []
    deadline = time.monotonic() + seconds
    cycle = itertools.cycle(targets)

    async def worker() -> None:
        while time.monotonic() < deadline:
            result = await probe(next(cycle))
            log_result(result, 0.0)
            results.append(result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def _paced(
    targets: list[Target], rate: float, seconds: float, tick: float
) -> list[ProbeResult]:
    results: list[ProbeResult] = []
    tasks: set[asyncio.Task[None]] = set()
    cycle = itertools.cycle(targets)
    tick = tick or 1.0 / rate
    per_tick = rate * tick
    owed = 0.0

    async def one(target: Target) -> None:
        result = await probe(target)
        log_result(result, 0.0)
        results.append(result)

    start = time.monotonic()
    ticks = int(seconds / tick)
    for k in range(ticks):
        owed += per_tick
        while owed >= 1:
            owed -= 1
            task = asyncio.create_task(one(next(cycle)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, start + (k + 1) * tick - time.monotonic()))
    if tasks:
        await asyncio.gather(*tasks)
    return results


async def _run(args: argparse.Namespace, targets: list[Target]) -> tuple[int, int, float, float]:
    async def window(seconds: float) -> list[ProbeResult]:
        if args.rate:
            return await _paced(targets, args.rate, seconds, args.tick)
        return await _saturated(targets, args.concurrency, seconds)

    await window(args.warmup)
    prof = cProfile.Profile() if args.profile else None
    cpu0, t0 = _cpu(), time.monotonic()
    if prof is not None:
        prof.enable()
    results = await window(args.seconds)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    cpu, wall = _cpu() - cpu0, time.monotonic() - t0
    failed = sum(1 for r in results if not r.success)
    return len(results), failed, cpu, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=("starttls", "implicit_tls"), default="starttls")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--rate", type=float, default=0.0, help="probes/s (default: saturated)")
    p.add_argument("--tick", type=float, default=0.25, help="seconds between starts when paced")
    p.add_argument("--concurrency", type=int, default=100, help="probes at once when saturated")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--endpoints", type=int, default=400)
    p.add_argument("--subnet", type=int, default=81, help="B of the 127.B.x.y endpoints")
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--profile", help="write a cProfile of the measured window here")
    args = p.parse_args()
    if not 1 <= args.subnet <= 254:
        p.error("--subnet must be 1..254")
    workdir = Path(tempfile.mkdtemp(prefix="smtp-tls-probeloop-"))
    pki = peers.make_pki(workdir)
    eps = peers.endpoints(args.endpoints, args.subnet)
    implicit = args.mode == "implicit_tls"
    targets = [
        Target.create(
            ep.host,
            ep.port,
            mode=Mode(args.mode),
            server_name=SERVER_NAME,
            ehlo_name="bench.example",
            ca_file=pki.ca_file,
            timeout=10.0,
        )
        for ep in eps
        if ep.implicit == implicit
    ]
    server = ScriptedServer(eps, pki, args.workers)
    try:
        if args.loop == "uvloop":
            import uvloop

            runner = uvloop.run
        else:
            runner = asyncio.run
        done, failed, cpu, wall = runner(_run(args, targets))
    finally:
        server.stop()
    how = f"{args.rate:g}/s tick {args.tick:g}" if args.rate else f"saturated x{args.concurrency}"
    print(
        f"{args.mode} {args.loop} {how}: {done} probes ({failed} failed) in {wall:.1f}s, "
        f"{1000 * cpu / max(done, 1):.3f} ms CPU/probe"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
