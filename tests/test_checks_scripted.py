"""The opt-in checks against scripted servers: the vulnerable and the misbehaving ones no real
server here produces on demand, each check's verdict and exactly what it sent."""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings

import pytest
import trustme

from exporter.checks.model import CheckName, CheckRun
from exporter.checks.run import run_checks
from exporter.model import Checks, Mode, Reason, Stage, Target
from tests.scripted import Handler, read_command, serve, smtp_session

WAIT = 0.3  # the injection check's wait for an unsolicited reply: short, these servers are local


class Server:
    """An SMTP server that reads raw bytes and splits lines itself, so what it does with bytes
    it holds at STARTTLS is explicit: `keep_pending` carries them into TLS (CVE-2011-0411)."""

    def __init__(
        self,
        tls: ssl.SSLContext | None,
        *,
        keep_pending: bool = False,
        refuse_pipelined: bool = False,
        answer_before_tls: bool = False,
        hang_up_after_tls: bool = False,
        ehlo: bytes = b"250-scripted.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
        mail_reply: bytes = b"250 2.1.0 Ok\r\n",
        close_after_mail: bool = False,
    ) -> None:
        self.tls = tls
        self.keep_pending = keep_pending
        self.refuse_pipelined = refuse_pipelined
        self.answer_before_tls = answer_before_tls
        self.hang_up_after_tls = hang_up_after_tls
        self.ehlo = ehlo
        self.mail_reply = mail_reply
        self.close_after_mail = close_after_mail
        self.commands: list[tuple[str, bool]] = []  # (command, inside TLS)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        in_tls = False
        writer.write(b"220 scripted.test ESMTP\r\n")

        async def line() -> str:
            nonlocal buf
            while b"\r\n" not in buf:
                data = await reader.read(4096)
                if not data:
                    raise ConnectionResetError("client went away")
                buf += data
            one, buf = buf.split(b"\r\n", 1)
            return one.decode("ascii", "replace")

        while True:
            cmd = await line()
            self.commands.append((cmd, in_tls))
            verb = cmd.upper().split(" ")[0]
            if verb == "EHLO":
                writer.write(b"250-scripted.test\r\n250 AUTH PLAIN\r\n" if in_tls else self.ehlo)
            elif verb == "STARTTLS" and not in_tls and self.tls is not None:
                if buf and self.refuse_pipelined:  # Exim: commands behind STARTTLS
                    writer.write(b"554 Security failure\r\n")
                    await writer.drain()
                    continue
                writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                if buf and self.answer_before_tls:
                    writer.write(b"250 2.0.0 Ok\r\n")  # the NOOP, answered in plaintext
                await writer.drain()
                pending, buf = buf, b""
                await writer.start_tls(self.tls)
                in_tls = True
                if self.hang_up_after_tls:
                    writer.close()
                    return
                if self.keep_pending and not self.answer_before_tls:
                    buf = pending  # the bug: plaintext read before the upgrade survives it
                continue
            elif verb == "NOOP":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == "MAIL":
                writer.write(self.mail_reply)
                if self.close_after_mail:
                    await writer.drain()
                    writer.close()
                    return
            elif verb == "RSET":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()


async def check(
    handler: Handler,
    name: CheckName,
    *,
    mode: Mode = Mode.STARTTLS,
    timeout: float = 3.0,
) -> CheckRun:
    flags = {name.value: True} if name is not CheckName.PROTOCOLS else {"protocols": True}
    async with serve(handler) as (host, port):
        target = Target.create(
            host, port, mode=mode, ehlo_name="probe.test", timeout=timeout, checks=Checks(**flags)
        )
        (run,) = await run_checks(target, None, injection_wait=WAIT)
    assert run.check is name
    return run


def sent(server: Server) -> list[str]:
    return [cmd for cmd, _ in server.commands]


# -- STARTTLS command injection ---------------------------------------------------------------


async def test_server_that_carries_plaintext_into_tls_is_vulnerable(
    server_tls: ssl.SSLContext,
) -> None:
    server = Server(server_tls, keep_pending=True)
    run = await check(server, CheckName.STARTTLS_INJECTION)
    assert (run.verdict, run.failure) == (True, None)
    # the NOOP arrived once, in plaintext, and was answered after the upgrade
    assert server.commands == [
        ("EHLO probe.test", False),
        ("STARTTLS", False),
        ("NOOP", True),  # the server took it for a command sent inside TLS
        ("QUIT", True),
    ]
    texts = [e.text for e in run.transcript]
    assert "STARTTLS" in texts and "NOOP" in texts
    assert any("answered inside TLS" in t for t in texts)


async def test_server_that_drops_pending_plaintext_is_not_vulnerable(
    server_tls: ssl.SSLContext,
) -> None:
    server = Server(server_tls)
    run = await check(server, CheckName.STARTTLS_INJECTION)
    assert (run.verdict, run.failure) == (False, None)
    assert server.commands == [
        ("EHLO probe.test", False),
        ("STARTTLS", False),
        ("QUIT", True),
    ]
    assert any("nothing inside TLS in 0.3s" in e.text for e in run.transcript)


async def test_server_that_hangs_up_after_the_handshake_is_not_vulnerable(
    server_tls: ssl.SSLContext,
) -> None:
    run = await check(Server(server_tls, hang_up_after_tls=True), CheckName.STARTTLS_INJECTION)
    assert (run.verdict, run.failure) == (False, None)
    assert any("closed the connection after the handshake" in e.text for e in run.transcript)


async def test_server_that_refuses_a_pipelined_starttls_is_not_vulnerable(
    server_tls: ssl.SSLContext,
) -> None:
    server = Server(server_tls, refuse_pipelined=True)
    run = await check(server, CheckName.STARTTLS_INJECTION)
    assert (run.verdict, run.failure) == (False, None)
    assert any("554 Security failure" in e.text for e in run.transcript)
    assert sent(server) == ["EHLO probe.test", "STARTTLS", "NOOP", "QUIT"]  # all in plaintext


async def test_noop_answered_in_plaintext_before_tls_is_discarded_not_vulnerable(
    server_tls: ssl.SSLContext,
) -> None:
    run = await check(Server(server_tls, answer_before_tls=True), CheckName.STARTTLS_INJECTION)
    assert (run.verdict, run.failure) == (False, None)
    assert any("discarded plaintext after 220" in e.text for e in run.transcript)


async def test_injection_without_starttls_has_no_verdict() -> None:
    server = Server(None, ehlo=b"250-scripted.test\r\n250 PIPELINING\r\n")
    run = await check(server, CheckName.STARTTLS_INJECTION)
    assert run.verdict is None
    assert run.failure is not None
    assert (run.failure.stage, run.failure.reason) == (
        Stage.STARTTLS,
        Reason.STARTTLS_NOT_ADVERTISED,
    )
    assert sent(server) == ["EHLO probe.test"]  # no STARTTLS sent, then closed


async def test_injection_sends_starttls_and_noop_in_one_write(server_tls: ssl.SSLContext) -> None:
    chunks: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted.test ESMTP\r\n")
        await read_command(reader)  # EHLO
        writer.write(b"250-scripted.test\r\n250 STARTTLS\r\n")
        await writer.drain()
        chunks.append(await reader.read(4096))  # one read: what one write put on the wire
        writer.write(b"554 5.5.1 no pipelining here\r\n")
        await writer.drain()
        await read_command(reader)

    run = await check(handler, CheckName.STARTTLS_INJECTION)
    assert chunks == [b"STARTTLS\r\nNOOP\r\n"]
    assert run.verdict is False


# -- protocol versions ------------------------------------------------------------------------


def only(version: ssl.TLSVersion, ca: trustme.CA) -> ssl.SSLContext:
    """A server context that accepts one TLS version only (below 1.2: security level 0)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ca.issue_cert("scripted.test", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (ssl.TLSVersion.TLSv1, {"TLS 1.0": True, "TLS 1.1": False, "TLS 1.2": False}),
        (ssl.TLSVersion.TLSv1_2, {"TLS 1.0": False, "TLS 1.1": False, "TLS 1.2": True}),
        (ssl.TLSVersion.TLSv1_3, {"TLS 1.0": False, "TLS 1.1": False, "TLS 1.2": False}),
    ],
    ids=["tls1.0-only", "tls1.2-only", "tls1.3-only"],
)
@pytest.mark.parametrize("mode", [Mode.STARTTLS, Mode.IMPLICIT_TLS])
async def test_protocols_of_single_version_servers(
    ca: trustme.CA, version: ssl.TLSVersion, expected: dict[str, bool], mode: Mode
) -> None:
    tls = only(version, ca)
    seen: list[str] = []

    async def implicit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(tls)
        writer.write(b"220 scripted.test ESMTP\r\n")
        await writer.drain()
        seen.append(await read_command(reader))
        writer.write(b"221 2.0.0 Bye\r\n")
        await writer.drain()

    server = Server(tls)
    handler: Handler = server if mode is Mode.STARTTLS else implicit
    run = await check(handler, CheckName.PROTOCOLS, mode=mode)
    assert run.failure is None, run.failure
    assert dict(run.accepted) == expected
    assert [v for v, _ in run.accepted] == ["TLS 1.0", "TLS 1.1", "TLS 1.2"]
    if mode is Mode.STARTTLS:
        # three dialogues: EHLO, STARTTLS, a ClientHello; QUIT only after a completed handshake
        wanted = [
            c for ok in expected.values() for c in ("EHLO probe.test", "STARTTLS", *["QUIT"] * ok)
        ]
        assert sent(server) == wanted
        assert all(in_tls for cmd, in_tls in server.commands if cmd == "QUIT")
    else:
        assert seen == ["QUIT"] * sum(expected.values())  # after the greeting, never before


async def test_protocols_without_starttls_have_no_verdict() -> None:
    run = await check(Server(None, ehlo=b"250 scripted.test\r\n"), CheckName.PROTOCOLS)
    assert run.accepted == ()
    assert run.failure is not None
    assert (run.failure.stage, run.failure.reason) == (
        Stage.STARTTLS,
        Reason.STARTTLS_NOT_ADVERTISED,
    )
    assert run.failure.detail.startswith("TLS 1.0: ")


async def test_protocols_when_starttls_is_refused_have_no_verdict(
    server_tls: ssl.SSLContext,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await smtp_session(
            reader, writer, server_tls, starttls_reply=b"454 4.7.0 TLS not available\r\n"
        )

    run = await check(handler, CheckName.PROTOCOLS)
    assert run.accepted == ()
    assert run.failure is not None
    assert (run.failure.stage, run.failure.reason) == (Stage.STARTTLS, Reason.STARTTLS_REJECTED)


# -- submission requires TLS ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "requires"),
    [
        (b"530 5.7.0 Must issue a STARTTLS command first\r\n", True),
        (b"530 Must issue a STARTTLS command first\r\n", True),  # no enhanced status code
        (b"554 5.7.0 TLS required\r\n", True),
        (b"250 2.1.0 Ok\r\n", False),
        (b"550 5.7.1 Not allowed\r\n", False),
        (b"451 4.7.0 Try again later\r\n", False),
    ],
)
async def test_submission_verdict_follows_the_reply_to_mail_from(
    reply: bytes, requires: bool
) -> None:
    server = Server(None, mail_reply=reply)
    run = await check(server, CheckName.SUBMISSION_REQUIRES_TLS)
    assert (run.verdict, run.failure) == (requires, None)
    # the null sender only, then RSET; never RCPT, DATA or AUTH
    assert sent(server) == ["EHLO probe.test", "MAIL FROM:<>", "RSET", "QUIT"]


async def test_submission_with_auth_in_the_clear_does_not_require_tls() -> None:
    server = Server(None, ehlo=b"250-scripted.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n")
    run = await check(server, CheckName.SUBMISSION_REQUIRES_TLS)
    assert (run.verdict, run.failure) == (False, None)
    assert sent(server) == ["EHLO probe.test", "QUIT"]  # no MAIL FROM needed to know
    assert any("AUTH PLAIN LOGIN offered before TLS" in e.text for e in run.transcript)


async def test_submission_verdict_stands_when_the_server_hangs_up_after_mail() -> None:
    server = Server(None, mail_reply=b"530 5.7.0 Must issue a STARTTLS command first\r\n")
    server.close_after_mail = True
    run = await check(server, CheckName.SUBMISSION_REQUIRES_TLS)
    assert (run.verdict, run.failure) == (True, None)
    assert any("no reply to RSET" in e.text for e in run.transcript)


async def test_submission_silent_after_mail_from_has_no_verdict() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted.test ESMTP\r\n")
        await read_command(reader)
        writer.write(b"250 scripted.test\r\n")
        await writer.drain()
        await read_command(reader)  # MAIL FROM:<>, never answered
        await reader.read()

    run = await check(handler, CheckName.SUBMISSION_REQUIRES_TLS, timeout=0.5)
    assert run.verdict is None
    assert run.failure is not None
    assert (run.failure.stage, run.failure.reason) == (Stage.MAIL_FROM, Reason.TIMEOUT)


async def test_checks_that_do_not_fit_an_implicit_tls_target_are_skipped() -> None:
    target = Target.create(
        "127.0.0.1",
        465,
        checks=Checks(starttls_injection=True, submission_requires_tls=True),
    )
    assert await run_checks(target, None) == ()


async def test_connect_failure_is_no_verdict() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        target = Target.create("127.0.0.1", port, checks=Checks(True, True, True), timeout=2)
        runs = await run_checks(target, "127.0.0.1")
    assert [r.check for r in runs] == list(CheckName)
    for r in runs:
        assert r.verdict is None and r.accepted == ()
        assert r.failure is not None
        assert (r.failure.stage, r.failure.reason) == (Stage.CONNECT, Reason.CONNECTION_REFUSED)
