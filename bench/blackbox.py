"""blackbox_exporter as the reference: its modules for the same dialogues, and a fixed-rate driver.

The modules do what our probe does on the wire: STARTTLS is the tcp prober with a query_response
script (greeting, EHLO, STARTTLS, handshake, EHLO, QUIT and its 221); implicit TLS is the tcp
prober with `tls: true` (handshake, greeting, EHLO, QUIT). Both verify the chain against the same
CA file and the same server name. The driver requests `/probe` at a fixed rate over keep-alive
connections, as many Prometheus scrapes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import HttpConnection

BINARY_NAMES = ("prometheus-blackbox-exporter", "blackbox_exporter")


def binary() -> str | None:
    for name in BINARY_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
    return first.split("version", 1)[-1].split("(")[0].strip() or "?"


def _starttls(ca_file: str, server_name: str) -> str:
    return f"""\
    prober: tcp
    timeout: 10s
    tcp:
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: {ca_file}
        server_name: {server_name}
      query_response:
        - expect: "^220 "
        - send: "EHLO bench.example\\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\\r"
        - expect: "^220 "
        - starttls: true
        - send: "EHLO bench.example\\r"
        - expect: "^250 "
        - send: "QUIT\\r"
        - expect: "^221 "
"""


def _implicit(ca_file: str, server_name: str) -> str:
    return f"""\
    prober: tcp
    timeout: 10s
    tcp:
      preferred_ip_protocol: ip4
      tls: true
      tls_config:
        ca_file: {ca_file}
        server_name: {server_name}
      query_response:
        - expect: "^220 "
        - send: "EHLO bench.example\\r"
        - expect: "^250 "
        - send: "QUIT\\r"
        - expect: "^221 "
"""


def write_config(path: Path, modules: dict[str, tuple[str, str, str]]) -> None:
    """`modules`: name -> (mode, ca_file, server_name)."""
    parts = ["modules:\n"]
    for name, (mode, ca_file, server_name) in modules.items():
        body = _implicit if mode == "implicit_tls" else _starttls
        parts.append(f"  {name}:\n{body(ca_file, server_name)}")
    path.write_text("".join(parts))


@dataclass
class Blackbox:
    pid: int
    port: int


@contextlib.asynccontextmanager
async def running(path: str, config: Path, port: int, log: Path) -> AsyncIterator[Blackbox]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                path,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        await _ready(port, proc.pid, log)
        yield Blackbox(proc.pid, port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _ready(port: int, pid: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        conn = HttpConnection("127.0.0.1", port)
        try:
            if (await conn.get("/-/healthy")).status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            await asyncio.sleep(0.1)
            continue
        break
    raise RuntimeError(f"blackbox_exporter not healthy: {log.read_text(errors='replace')[-2000:]}")


@dataclass
class DriveResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # ticks with every connection busy: the rate was not held
    done_at: list[float] = field(default_factory=list)  # monotonic time of each answer


async def drive(
    port: int,
    module: str,
    targets: list[str],
    rate: float,
    seconds: float,
    connections: int = 128,
) -> DriveResult:
    """GET /probe?module=..&target=.. `rate` times a second for `seconds`, cycling `targets`."""
    result = DriveResult()
    idle: list[HttpConnection] = [HttpConnection("127.0.0.1", port) for _ in range(connections)]
    pending: set[asyncio.Task[None]] = set()

    async def one(conn: HttpConnection, target: str) -> None:
        try:
            r = await conn.get(f"/probe?module={module}&target={target}")
            if r.status == 200 and b"\nprobe_success 1" in r.body:
                result.ok += 1
            else:
                result.failed += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.failed += 1
        finally:
            result.done_at.append(time.monotonic())
            idle.append(conn)

    start = time.monotonic()
    i = 0
    while True:
        due = start + i / rate
        if due - start >= seconds:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not idle:
            result.skipped += 1
        else:
            task = asyncio.create_task(one(idle.pop(), targets[i % len(targets)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            result.sent += 1
        i += 1
    if pending:
        await asyncio.wait(pending, timeout=15)
    for conn in idle:
        conn.close()
    return result
