"""The service's event loop (`--event-loop`): uvloop when installed, asyncio's otherwise, and real
probes on uvloop (its TCP transport is not an asyncio.Transport, and reads into our buffer)."""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
import sys

import pytest

from exporter.model import Mode, ProbeResult, Reason, Stage, Target
from exporter.probe import probe
from exporter.service.main import build_parser, loop_factory
from tests.conftest import need
from tests.scripted import Handler, read_command, serve, smtp_session

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def test_asyncio_when_asked() -> None:
    name, factory = loop_factory("asyncio")
    loop = factory()
    try:
        assert name == "asyncio"
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_auto_takes_uvloop_when_installed() -> None:
    name, factory = loop_factory("auto")
    loop = factory()
    try:
        assert name.startswith("uvloop") == HAVE_UVLOOP
        assert type(loop).__module__.startswith("uvloop") == HAVE_UVLOOP
    finally:
        loop.close()


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: import fails
    assert loop_factory("auto")[0] == "asyncio"
    with pytest.raises(ImportError):
        loop_factory("uvloop")


def test_the_flag() -> None:
    assert build_parser().parse_args([]).event_loop == "auto"
    assert build_parser().parse_args(["--event-loop=asyncio"]).event_loop == "asyncio"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--event-loop=trio"])


def on_uvloop(handler: Handler, mode: Mode, ca_file: str) -> ProbeResult:
    """One probe of a scripted server, both on a uvloop event loop."""
    need(HAVE_UVLOOP, "uvloop is not installed (pip install uvloop)")
    import uvloop

    async def main() -> ProbeResult:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with serve(handler) as (host, port):
            target = Target.create(
                host, port, mode=mode, ca_file=ca_file, ehlo_name="probe.test", timeout=5.0
            )
            return await probe(target)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def test_starttls_probe_on_uvloop(server_tls: ssl.SSLContext, ca_file: str) -> None:
    result = on_uvloop(lambda r, w: smtp_session(r, w, server_tls), Mode.STARTTLS, ca_file)
    assert result.success, result.failure
    assert result.tls is not None and result.tls.version.startswith("TLS 1.")
    assert result.verification is not None and result.verification.trusted
    assert result.smtp.extensions_after_tls == ("AUTH",)
    assert [e.text for e in result.transcript if e.kind == "C"] == [
        "EHLO probe.test",
        "STARTTLS",
        "EHLO probe.test",
        "QUIT",
    ]
    assert result.phases.tls_handshake is not None and result.phases.tls_handshake > 0


def test_implicit_tls_probe_on_uvloop(server_tls: ssl.SSLContext, ca_file: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(server_tls)
        writer.write(b"220 scripted.test ESMTP\r\n")
        while True:
            cmd = (await read_command(reader)).upper()
            if cmd.startswith("EHLO"):
                writer.write(b"250-scripted.test\r\n250 AUTH PLAIN\r\n")
            elif cmd == "QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return

    result = on_uvloop(handler, Mode.IMPLICIT_TLS, ca_file)
    assert result.success, result.failure
    assert result.smtp.greeting_code == 220
    assert result.verification is not None and result.verification.trusted


def test_a_failure_on_uvloop(ca_file: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted.test ESMTP\r\n")
        await read_command(reader)
        writer.write(b"250-scripted.test\r\n250 PIPELINING\r\n")
        await read_command(reader)

    result = on_uvloop(handler, Mode.STARTTLS, ca_file)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == (
        Stage.STARTTLS,
        Reason.STARTTLS_NOT_ADVERTISED,
    )
