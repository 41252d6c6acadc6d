"""What the bench reads: CPU and memory from /proc, and HTTP answers with their latency."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far (children not included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # After the ")" that ends comm, field 3 (state) is index 0: utime is field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in bytes: resident now, and the peak so far."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


def machine() -> dict[str, str]:
    """nproc, the CPU model, Python and OpenSSL versions, the load average."""
    import platform
    import ssl

    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,  # Python's ssl, and `openssl s_time`'s on Debian
        "probe_openssl": _probe_openssl(),
        "loadavg": load,
        "kernel": platform.release(),
    }


def _probe_openssl() -> str:
    """The OpenSSL the exporter's probes run on (pyOpenSSL's, from cryptography's wheel)."""
    try:
        from OpenSSL import SSL
    except ImportError:
        return "?"
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from sending the request to the last byte of the body


class HttpConnection:
    """One keep-alive HTTP/1.1 client connection to a loopback server; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20
            )
        assert self._reader is not None
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        start = time.monotonic()
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            return await self._read(start)
        except BaseException:
            self.close()
            raise

    async def _read(self, start: float) -> Response:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._reader.readuntil(b"\r\n")
                    break
                parts.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await self._reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body, time.monotonic() - start)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def wait_for_line(path: str, needle: str, timeout: float, pid_alive: int) -> str:
    """Poll a log file until a line containing `needle` appears; return that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as fh:
                for line in fh:
                    if needle in line:
                        return line
        except FileNotFoundError:
            pass
        try:
            os.kill(pid_alive, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    with open(path, errors="replace") as fh:
        tail = fh.read()[-2000:]
    raise RuntimeError(f"no {needle!r} in {path} within {timeout:g}s:\n{tail}")
