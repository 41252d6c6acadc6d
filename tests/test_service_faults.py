"""Faults the running exporter survives, each seen from outside: a subprocess on loopback, its
/metrics, its log and its /proc entry. Healthy targets must keep their interval beside the faulty
ones; every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.scripted import read_command, serve, smtp_session
from tests.test_service_e2e import (
    ExporterProcess,
    closed_port,
    eventually,
    exporter_process,
    samples,
    value,
)

if TYPE_CHECKING:
    from tests.fixtures.zone import MailDomains

TLS_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"  # fatal handshake_failure


async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """TCP accepted, then never a byte."""
    await asyncio.Event().wait()


async def tls_alert(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TLS alert in the middle of the handshake after STARTTLS."""
    writer.write(b"220 alert.test ESMTP\r\n")
    await read_command(reader)
    writer.write(b"250-alert.test\r\n250 STARTTLS\r\n")
    await read_command(reader)
    writer.write(b"220 go ahead\r\n")
    await reader.read(1)  # the ClientHello has started to arrive
    writer.write(TLS_ALERT)
    await writer.drain()


async def reset_mid_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half a multi-line greeting, then a TCP reset (SO_LINGER 0)."""
    writer.write(b"220-reset.test first line of two\r\n")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def half_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The greeting, then the server shuts its write side; it still reads what comes."""
    writer.write(b"220 half.test ESMTP\r\n")
    writer.write_eof()
    await writer.drain()
    while await reader.read(1024):
        pass


async def too_busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"421 4.7.0 busy.test too many connections, try later\r\n")
    await writer.drain()


@contextlib.asynccontextmanager
async def servers(tls: ssl.SSLContext) -> AsyncIterator[dict[str, int]]:
    async with contextlib.AsyncExitStack() as stack:
        ports = {}
        for name, handler in (
            ("good", lambda r, w: smtp_session(r, w, tls)),
            ("tarpit", tarpit),
            ("tls_alert", tls_alert),
            ("reset", reset_mid_reply),
            ("half_close", half_close),
            ("busy", too_busy),
        ):
            ports[name] = (await stack.enter_async_context(serve(handler)))[1]
        yield ports


@contextlib.contextmanager
def silent_dns() -> Iterator[int]:
    """A UDP and TCP port where a name server would be, that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", port))
            tcp.listen()
            yield port


def entry(name: str, port: int, ca_file: str, *, interval: str, host: str = "127.0.0.1") -> str:
    return (
        f"  - {{name: {name}, host: {host}, port: {port}, server_name: scripted.test, "
        f"ca_file: {ca_file}, interval: {interval}, timeout: 1s}}\n"
    )


def fault_config(ports: dict[str, int], ca_file: str, dns_port: int) -> str:
    targets = "".join(
        entry(name, port, ca_file, interval="1s" if name == "good" else "2s")
        for name, port in ports.items()
    )
    targets += entry("by_name", ports["good"], ca_file, interval="2s", host="mail.example.test")
    return (
        "defaults:\n  ehlo_name: exporter.test\n  host_concurrency: 16\n"
        f"dns:\n  nameservers: ['127.0.0.1:{dns_port}']\n  timeout: 500ms\n"
        f"targets:\n{targets}"
        "domains:\n  - {name: example.test, interval: 2s, timeout: 1s, probe_mx: false}\n"
    )


def failure(text: str, target: str) -> tuple[str, str] | None:
    for name, labels, v in samples(text):
        if name == "smtp_tls_probe_failure_info" and labels["target"] == target and v == 1:
            return labels["stage"], labels["reason"]
    return None


async def probe_times(exp: ExporterProcess, target: str, count: int) -> list[float]:
    """The start times of `count` consecutive scheduled probes of `target`, read from /metrics."""
    seen: list[float] = []

    async def grow() -> list[float]:
        ts = value(await exp.metrics(), "smtp_tls_last_probe_timestamp_seconds", target=target)
        if ts is not None and (not seen or ts != seen[-1]):
            seen.append(ts)
        return seen

    await eventually(grow, lambda s: len(s) >= count, f"{count} probes of {target}")
    return seen


EXPECTED = {
    "tarpit": ("greeting", "timeout"),
    "tls_alert": ("tls_handshake", "tls_handshake_failed"),
    "reset": ("greeting", "connection_closed"),
    "half_close": ("ehlo", "connection_closed"),
    "busy": ("greeting", "greeting_rejected"),
    "by_name": ("resolve", "timeout"),
}


async def test_faulty_peers_beside_a_healthy_one(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    async with servers(server_tls) as ports:
        with silent_dns() as dns_port, closed_port() as dead_dns:
            path = tmp_path / "config.yml"
            path.write_text(fault_config(ports, ca_file, dns_port))
            with exporter_process(path) as exp:
                text = await eventually(
                    exp.metrics,
                    lambda t: all(failure(t, n) == want for n, want in EXPECTED.items()),
                    "every fault's stage and reason",
                )
                assert value(text, "smtp_tls_probe_success", target="good") == 1
                # The servers that said 421 or dropped the connection are backed off (two
                # intervals, 4s, at first), and the log says so.
                assert value(text, "smtp_tls_exporter_endpoints_backing_off") == 3
                port = str(ports["busy"])
                assert value(text, "smtp_tls_exporter_backoff_seconds", port=port) == 4
                exp.wait_line(lambda s: "backing off" in s and "target=busy" in s, 5, "back-off")
                # The mail domain's lookups time out against the silent name server.
                text = await eventually(
                    exp.metrics,
                    lambda t: any(
                        ls.get("domain") == "example.test" and ls.get("reason") == "dns_error"
                        for _, ls, _ in samples(t)
                    ),
                    "the domain's dns_error",
                )
                # The healthy target keeps its 1s interval throughout: gaps of one interval,
                # give or take the time to start a probe.
                times = await probe_times(exp, "good", 6)
                gaps = [b - a for a, b in itertools.pairwise(times)]
                assert all(0.9 < g < 1.5 for g in gaps[1:]), gaps  # the first may be up to 2s

                # DNS down rather than slow: nothing on the name server's port. UDP gets no
                # answer either way, so this too is a timeout, within dns.timeout.
                path.write_text(fault_config(ports, ca_file, dead_dns))
                exp.signal(signal.SIGHUP)
                exp.wait_line(lambda s: "config reloaded" in s and "dns=changed" in s, 5, "reload")
                await probe_times(exp, "by_name", 2)
                text = await exp.metrics()
                assert failure(text, "by_name") == ("resolve", "timeout")
                phase = {"target": "by_name", "phase": "resolve"}
                resolve = value(text, "smtp_tls_probe_duration_seconds", **phase)
                assert resolve is not None and resolve < 1.0
                times = await probe_times(exp, "good", 4)
                gaps = [b - a for a, b in itertools.pairwise(times)]
                assert all(0.9 < g < 1.5 for g in gaps), gaps
                assert exp.stop() == 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_the_config_deleted_truncated_or_invalid_between_reloads(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    async with servers(server_tls) as ports:
        path = tmp_path / "config.yml"
        good = "defaults: {ehlo_name: exporter.test}\ntargets:\n" + entry(
            "good", ports["good"], ca_file, interval="1s"
        )
        path.write_text(good)
        with exporter_process(path) as exp:
            await probe_times(exp, "good", 1)
            breakages = [
                ("deleted", path.unlink, "cannot read"),
                ("emptied", lambda: path.write_text(""), "the config is empty"),
                ("truncated", lambda: path.write_text(good[: good.index("port")]), "line "),
                ("invalid", lambda: path.write_text(good + "bogus: 1\n"), "bogus: unknown key"),
            ]
            for what, breakage, why in breakages:
                breakage()
                exp.lines.clear()
                exp.signal(signal.SIGHUP)
                text = await eventually(
                    exp.metrics,
                    lambda t: value(t, "smtp_tls_exporter_config_last_reload_successful") == 0,
                    f"the failed reload of the {what} config",
                )
                line = exp.wait_line(lambda s: "reload failed" in s, 5, f"the {what} error")
                assert why in line, (what, line)
                assert value(text, "smtp_tls_exporter_targets") == 1
                await probe_times(exp, "good", 2)  # still probed, on the old config
                path.write_text(good)
                exp.signal(signal.SIGHUP)
                await eventually(
                    exp.metrics,
                    lambda t: value(t, "smtp_tls_exporter_config_last_reload_successful") == 1,
                    "the good config back",
                )
            assert exp.stop() == 0


def storm_config(ports: dict[str, int], ca_file: str, i: int) -> str:
    """Variant i of a busy config: 12 targets, half renamed each time, on good and bad peers."""
    names = list(ports)
    entries = [
        entry(f"t{(i + k) % 20}", ports[names[k % len(names)]], ca_file, interval="1s")
        for k in range(12)
    ]
    return "defaults: {ehlo_name: exporter.test, host_concurrency: 16}\ntargets:\n" + "".join(
        entries
    )


QUIET_NAMES = ("q0", "q1", "q2", "q3", "q4")


def quiet_config(ports: dict[str, int], ca_file: str, last: str) -> str:
    entries = [entry(n, ports["good"], ca_file, interval="1h") for n in (*QUIET_NAMES[:-1], last)]
    return "defaults: {ehlo_name: exporter.test, host_concurrency: 16}\ntargets:\n" + "".join(
        entries
    )


async def test_a_reload_storm_during_probing(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    async with servers(server_tls) as ports:
        path = tmp_path / "config.yml"

        def write(text: str) -> None:  # as editors and config managers should: rename
            tmp = tmp_path / "config.yml.new"
            tmp.write_text(text)
            tmp.rename(path)

        write(quiet_config(ports, ca_file, "q4"))
        with exporter_process(path) as exp:
            assert exp.proc is not None
            pid = exp.proc.pid

            def settled(names: tuple[str, ...]) -> object:
                async def get() -> str:
                    return await exp.metrics()

                return eventually(
                    get,
                    lambda t: (
                        all(value(t, "smtp_tls_probe_success", target=n) == 1 for n in names)
                        and value(t, "smtp_tls_exporter_tasks") == base_tasks
                    ),
                    "the quiet config, settled",
                )

            text = await eventually(
                exp.metrics,
                lambda t: all(
                    value(t, "smtp_tls_probe_success", target=n) == 1 for n in QUIET_NAMES
                ),
                "the quiet targets",
            )
            # Quiet: every probe done, nothing in flight (interval 1h).
            base_tasks = value(text, "smtp_tls_exporter_tasks")
            assert base_tasks is not None
            base_fds = fds(pid)

            # 100 SIGHUPs in a burst, the config changing under them, probes in flight.
            for i in range(100):
                write(storm_config(ports, ca_file, i))
                exp.signal(signal.SIGHUP)
                if i % 10 == 0:
                    status, _ = await exp.get("/-/healthy")
                    assert status == 200
            final = (*QUIET_NAMES[:-1], "q9")
            write(quiet_config(ports, ca_file, "q9"))
            exp.signal(signal.SIGHUP)
            start = time.monotonic()
            text = await settled(final)
            settle = time.monotonic() - start
            assert value(text, "smtp_tls_exporter_config_last_reload_successful") == 1
            assert value(text, "smtp_tls_exporter_targets") == len(final)
            shown = {ls["target"] for _, ls, _ in samples(text) if "target" in ls}
            assert shown == set(final)
            assert exp.proc.poll() is None

            # Sockets and files back to what they were before the storm.
            async def open_fds() -> int:
                return fds(pid)

            await eventually(open_fds, lambda n: n == base_fds, f"{base_fds} open files")
            reloads = [s for s in exp.lines if "config reloaded" in s]
            print(
                f"\nreload storm: {len(reloads)} reloads for 101 SIGHUPs, settled in {settle:.1f}s"
            )
            assert 2 <= len(reloads) < 101
            assert exp.stop() == 0


async def test_http_clients_that_half_close(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("targets: []\n")
    with exporter_process(path) as exp:
        host, port = exp.url.removeprefix("http://").rsplit(":", 1)

        def ask(request: bytes) -> bytes:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(request)
                s.shutdown(socket.SHUT_WR)  # the client is done sending
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        answer = await asyncio.to_thread(
            ask, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"Healthy.\n")
        # Half a request line, then the half close: http.server takes it for an HTTP/0.9
        # request and answers it bare; either way the connection ends, no thread is stuck.
        assert await asyncio.to_thread(ask, b"GET /metr") in (b"", b"/metr not found; see /\n")
        assert await asyncio.to_thread(ask, b"") == b""
        status, _ = await exp.get("/metrics")
        assert status == 200
        assert exp.stop() == 0


@pytest.mark.postfix
async def test_policy_host_down_beside_a_healthy_domain(
    tmp_path: Path, mail_domains: MailDomains
) -> None:
    """The real zone (dnsmasq, nginx, Postfix): `refused`'s policy host has nothing on 443."""
    world = mail_domains
    healthy, down = world.domain("enforce"), world.domain("refused")
    path = tmp_path / "config.yml"
    path.write_text(
        f"defaults: {{ehlo_name: exporter.test, ca_file: {world.ca_file}}}\n"
        f"dns: {{nameservers: ['{world.dns.host}:{world.dns.port}']}}\n"
        "targets: []\n"
        "domains:\n"
        f"  - {{name: {healthy}, interval: 1s, timeout: 1s, probe_mx: false}}\n"
        f"  - {{name: {down}, interval: 1s, timeout: 1s, probe_mx: false}}\n"
    )
    fetch_failure = "smtp_tls_mta_sts_policy_fetch_failure_info"
    stamp = "smtp_tls_domain_last_check_timestamp_seconds"
    with exporter_process(path) as exp:
        text = await eventually(
            exp.metrics,
            lambda t: value(t, fetch_failure, domain=down, reason="connection_error") == 1,
            "the policy fetch failure",
        )
        assert value(text, "smtp_tls_mta_sts_mode", domain=healthy, mode="enforce") == 1
        # both keep being checked on their interval
        for name in (healthy, down):
            seen: list[float] = []

            async def grow(name: str = name, seen: list[float] = seen) -> list[float]:
                ts = value(await exp.metrics(), stamp, domain=name)
                if ts is not None and ts not in seen:
                    seen.append(ts)
                return seen

            await eventually(grow, lambda s: len(s) >= 3, f"three checks of {name}")
            gaps = [b - a for a, b in itertools.pairwise(seen)]
            assert all(g < 2.5 for g in gaps), (name, gaps)
        assert exp.stop() == 0
