"""Where the exporter's memory and garbage-collection time go at N targets, in-process.

Runs the real service (`serve_command`) in this process against the bench's scripted peers
(loopback `127.B.x.y`), and at the given moments prints RSS and its peak, what the garbage
collector tracks (per generation, the most numerous types), and how long a full collection
takes. In-process so that `gc` and `/proc/self` describe the exporter itself; the peers run in
child processes.

    python bench/memprobe.py [--targets 10000] [--at 45,75] [--subnet 76] [--gc-log]

`--at`: seconds after start at which to report (the start-up round at 10,000 targets takes
about 25 s); after the last report the run stops. `--gc-log` prints every collection of
generation 2 with its duration, as it happens; `--garbage` lists the types of the objects the
full collection of each report finds in unreachable cycles; `--tracemalloc N` traces Python's
allocations (slower, and RSS then includes the tracing) and prints the N sites holding the most.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peers
from bench.run import write_exporter_config

PORT = 19466
GARBAGE = False  # --garbage: keep what the full collection finds in cycles and list its types
TRACE = 0  # --tracemalloc N: the N allocation sites holding the most memory, at each report


def status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
    return out


def report(label: str) -> None:
    # A scrape first, so that the exposition's build is part of what is measured.
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/metrics", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        size = len(resp.read())
    mem = status()
    print(f"--- {label}: RSS {mem['VmRSS']} MB, peak {mem['VmHWM']} MB, gzip body {size} B")
    gens = [len(gc.get_objects(g)) for g in range(3)]
    frozen = gc.get_freeze_count()
    print(f"tracked: gen0 {gens[0]}, gen1 {gens[1]}, gen2 {gens[2]}, frozen {frozen}")
    if TRACE:
        import tracemalloc

        current, peak = tracemalloc.get_traced_memory()
        print(f"traced: {current >> 20} MB now, {peak >> 20} MB at most")
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:TRACE]:
            print(f"  {stat}")
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    print("most tracked types: " + ", ".join(f"{k} {v}" for k, v in types.most_common(15)))
    start = time.perf_counter()
    if GARBAGE:
        gc.set_debug(gc.DEBUG_SAVEALL)
    freed = gc.collect()
    print(f"full collection: {1000 * (time.perf_counter() - start):.0f} ms, {freed} unreachable")
    if GARBAGE:
        gc.set_debug(0)
        garbage = types_of(gc.garbage)
        print("garbage in cycles: " + ", ".join(f"{k} {v}" for k, v in garbage.most_common(20)))
        gc.garbage.clear()
    sys.stdout.flush()


def types_of(objects: list[object]) -> collections.Counter[str]:
    return collections.Counter(type(o).__name__ for o in objects)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=10000)
    ap.add_argument("--at", default="45,75")
    ap.add_argument("--subnet", type=int, default=76)
    ap.add_argument("--gc-log", action="store_true")
    ap.add_argument("--garbage", action="store_true")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="N")
    args = ap.parse_args()
    global GARBAGE, TRACE
    GARBAGE = args.garbage
    TRACE = args.tracemalloc
    if TRACE:
        import tracemalloc

        tracemalloc.start()
    moments = [float(x) for x in args.at.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="memprobe-"))
    pki = peers.make_pki(workdir)
    eps = peers.endpoints(args.targets, args.subnet)
    server = peers.ScriptedServer(eps, pki, 2)
    config = workdir / "config.yml"
    write_exporter_config(config, [(f"{e.host}:{e.port}", e) for e in eps], 60.0, pki.ca_file)

    if args.gc_log:
        started: dict[str, float] = {}

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if info["generation"] != 2:
                return
            if phase == "start":
                started["t"] = time.perf_counter()
            else:
                ms = 1000 * (time.perf_counter() - started.get("t", time.perf_counter()))
                print(
                    f"[gc] {time.monotonic() - t0:6.1f}s full collection {ms:.0f} ms, "
                    f"{info['collected']} collected",
                    flush=True,
                )

        gc.callbacks.append(on_gc)

    def watcher() -> None:
        for at in moments:
            while time.monotonic() - t0 < at:
                time.sleep(0.5)
            report(f"at {at:g} s")
        server.stop()
        os._exit(0)

    t0 = time.monotonic()
    threading.Thread(target=watcher, daemon=True).start()
    from exporter.service.main import serve_command

    serve_command(
        [
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{PORT}",
            "--log.level=warn",
            "--event-loop=asyncio",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
