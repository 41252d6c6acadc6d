"""Every way a probe can fail, produced by scripted servers on loopback: stage and reason."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import tracemalloc
import warnings
from collections.abc import Awaitable, Callable

import pytest
import trustme

from exporter.model import Mode, ProbeResult, Reason, Stage, Target, VerifyPolicy
from exporter.probe import probe
from tests.scripted import read_command, serve, smtp_session

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def run(
    handler: Handler,
    *,
    mode: Mode = Mode.STARTTLS,
    timeout: float = 2.0,
    ca_file: str | None = None,
) -> ProbeResult:
    async with serve(handler) as (host, port):
        target = Target.create(
            host, port, mode=mode, ca_file=ca_file, ehlo_name="probe.test", timeout=timeout
        )
        return await probe(target)


def failed(result: ProbeResult, stage: Stage, reason: Reason) -> None:
    assert not result.success, result
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == (stage, reason), result.failure


async def test_well_behaved_server_succeeds(server_tls: ssl.SSLContext, ca_file: str) -> None:
    result = await run(lambda r, w: smtp_session(r, w, server_tls), ca_file=ca_file)
    assert result.success, result.failure
    assert result.smtp.starttls_advertised is True
    assert result.tls is not None and result.tls.version.startswith("TLS 1.")
    assert result.verification is not None and result.verification.trusted
    # RFC 3207 4.2: what was learnt before TLS is forgotten, the EHLO after TLS stands alone
    assert result.smtp.extensions_before_tls == ("PIPELINING", "STARTTLS")
    assert result.smtp.extensions_after_tls == ("AUTH",)
    assert [e.text for e in result.transcript if e.kind == "C"] == [
        "EHLO probe.test",
        "STARTTLS",
        "EHLO probe.test",
        "QUIT",
    ]


async def test_results_share_the_tls_facts_of_one_version_and_cipher(
    server_tls: ssl.SSLContext, ca_file: str
) -> None:
    """Every kept result is walked by full garbage collections: two probes that negotiated the
    same version and cipher share one TlsFacts rather than each keeping its own."""
    first = await run(lambda r, w: smtp_session(r, w, server_tls), ca_file=ca_file)
    second = await run(lambda r, w: smtp_session(r, w, server_tls), ca_file=ca_file)
    assert first.tls is not None and first.tls == second.tls
    assert first.tls is second.tls


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the kernel refuses
        result = await probe(Target.create("127.0.0.1", port, timeout=2))
    failed(result, Stage.CONNECT, Reason.CONNECTION_REFUSED)


async def test_connect_timeout() -> None:
    # A listener whose accept queue is full: further SYNs are dropped, connect never completes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        addr = listener.getsockname()
        fillers = []
        for _ in range(8):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(addr)
            fillers.append(f)
        try:
            result = await probe(Target.create(*addr, timeout=0.5))
        finally:
            for f in fillers:
                f.close()
    failed(result, Stage.CONNECT, Reason.TIMEOUT)


async def test_tarpit_greeting_times_out_within_the_deadline() -> None:
    async def tarpit(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    start = time.monotonic()
    result = await run(tarpit, timeout=0.5)
    assert time.monotonic() - start < 1.5
    failed(result, Stage.GREETING, Reason.TIMEOUT)
    assert result.failure is not None and "implicit_tls" in result.failure.detail


async def test_dripping_server_times_out() -> None:
    async def drip(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for byte in b"220 slow.test ESMTP this greeting never ends\r\n":
            w.write(bytes([byte]))
            await w.drain()
            await asyncio.sleep(0.1)  # the fault itself: one byte per tenth of a second

    result = await run(drip, timeout=0.6)
    failed(result, Stage.GREETING, Reason.TIMEOUT)
    assert result.failure is not None and "bytes received" in result.failure.detail


async def test_replies_in_pieces_are_read_whole(server_tls: ssl.SSLContext, ca_file: str) -> None:
    # Every reply (and, inside TLS, every record) arrives in small pieces: the connection parses
    # what it has on each arrival and hands the probe whole replies only.
    class Dribble:
        def __init__(self, w: asyncio.StreamWriter) -> None:
            self.w = w

        def write(self, data: bytes) -> None:
            self.pending = data

        async def flush(self) -> None:
            for i in range(0, len(self.pending), 5):
                self.w.write(self.pending[i : i + 5])
                await self.w.drain()
                await asyncio.sleep(0.002)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        out = Dribble(w)
        for reply in (b"220 pieces.test ESMTP\r\n", b"250-pieces.test\r\n250 STARTTLS\r\n"):
            out.write(reply)
            await out.flush()
            await read_command(r)
        w.write(b"220 2.0.0 go ahead\r\n")
        await w.drain()
        await w.start_tls(server_tls)
        await read_command(r)
        out.write(b"250-pieces.test\r\n250-SIZE 1000\r\n250 AUTH PLAIN\r\n")
        await out.flush()
        await read_command(r)
        out.write(b"221 2.0.0 bye\r\n")
        await out.flush()

    result = await run(handler, ca_file=ca_file)
    assert result.success, result.failure
    assert result.smtp.greeting == "pieces.test ESMTP"
    assert result.smtp.extensions_after_tls == ("SIZE", "AUTH")
    assert [e.text for e in result.transcript if e.kind == "S"] == [
        "220 pieces.test ESMTP",
        "250-pieces.test\n250 STARTTLS",
        "220 2.0.0 go ahead",
        "250-pieces.test\n250-SIZE 1000\n250 AUTH PLAIN",
        "221 2.0.0 bye",
    ]


@pytest.mark.parametrize(
    "greeting",
    [b"421 4.3.2 too busy, try later\r\n", b"554 5.7.1 no SMTP service here\r\n"],
)
async def test_rejecting_greeting(greeting: bytes) -> None:
    async def reject(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(greeting)
        await w.drain()
        await read_command(r)

    result = await run(reject)
    failed(result, Stage.GREETING, Reason.GREETING_REJECTED)
    assert result.smtp.greeting_code is None
    assert greeting[:3].decode() in result.failure.detail  # type: ignore[union-attr]


async def test_tls_spoken_on_a_starttls_port() -> None:
    async def tls_first(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"\x15\x03\x03\x00\x02\x02\x32")  # a TLS alert record instead of a greeting
        await w.drain()
        await r.read(1)

    result = await run(tls_first)
    failed(result, Stage.GREETING, Reason.TLS_ON_STARTTLS_PORT)


async def test_garbage_greeting() -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await w.drain()
        await r.read(1)

    result = await run(garbage)
    failed(result, Stage.GREETING, Reason.PROTOCOL_ERROR)


async def test_oversized_reply_is_refused_with_bounded_memory() -> None:
    chunk = b"x" * 65536

    async def flood(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220-")
        for _ in range(16 * 4):  # 4 MiB without a line end
            w.write(chunk)
            await w.drain()

    tracemalloc.start()
    try:
        result = await run(flood)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    failed(result, Stage.GREETING, Reason.REPLY_TOO_LARGE)
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes while a server sent 4 MiB"


async def test_too_many_reply_lines() -> None:
    async def many(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 ok\r\n")
        await read_command(r)
        w.write(b"250-x\r\n" * 1000 + b"250 end\r\n")
        await w.drain()
        await r.read(1)

    result = await run(many)
    failed(result, Stage.EHLO, Reason.REPLY_TOO_LARGE)


async def test_disconnect_mid_reply() -> None:
    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 ok\r\n")
        await read_command(r)
        w.write(b"250-mx.test\r\n250-PIPEL")
        await w.drain()
        w.close()

    result = await run(cut)
    failed(result, Stage.EHLO, Reason.CONNECTION_CLOSED)
    assert "unfinished reply" in result.failure.detail  # type: ignore[union-attr]


async def test_ehlo_rejected(server_tls: ssl.SSLContext) -> None:
    result = await run(lambda r, w: smtp_session(r, w, server_tls, ehlo=b"550 5.7.1 go away\r\n"))
    failed(result, Stage.EHLO, Reason.EHLO_REJECTED)


async def test_starttls_not_advertised(server_tls: ssl.SSLContext) -> None:
    result = await run(lambda r, w: smtp_session(r, w, None, ehlo=b"250-mx.test\r\n250 SIZE\r\n"))
    failed(result, Stage.STARTTLS, Reason.STARTTLS_NOT_ADVERTISED)
    assert result.smtp.starttls_advertised is False


async def test_starttls_rejected_454(server_tls: ssl.SSLContext) -> None:
    result = await run(
        lambda r, w: smtp_session(
            r, w, server_tls, starttls_reply=b"454 4.7.0 TLS not available due to local problem\r\n"
        )
    )
    failed(result, Stage.STARTTLS, Reason.STARTTLS_REJECTED)
    assert result.smtp.starttls_advertised is True


async def test_tls_alert_during_handshake() -> None:
    async def alert(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 ok\r\n")
        await read_command(r)
        w.write(b"250-mx.test\r\n250 STARTTLS\r\n")
        await read_command(r)
        w.write(b"220 go ahead\r\n")
        await w.drain()
        await r.read(5)  # the ClientHello's record header
        w.write(b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure alert
        await w.drain()
        await r.read(1)

    result = await run(alert)
    failed(result, Stage.TLS_HANDSHAKE, Reason.TLS_HANDSHAKE_FAILED)
    assert "handshake failure" in result.failure.detail.lower()  # type: ignore[union-attr]


async def test_tls_handshake_timeout() -> None:
    async def silent_after_220(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 ok\r\n")
        await read_command(r)
        w.write(b"250-mx.test\r\n250 STARTTLS\r\n")
        await read_command(r)
        w.write(b"220 go ahead\r\n")
        await w.drain()
        await asyncio.Event().wait()

    result = await run(silent_after_220, timeout=0.5)
    failed(result, Stage.TLS_HANDSHAKE, Reason.TIMEOUT)


async def test_plaintext_on_implicit_tls_port(server_tls: ssl.SSLContext) -> None:
    result = await run(lambda r, w: smtp_session(r, w, server_tls), mode=Mode.IMPLICIT_TLS)
    failed(result, Stage.TLS_HANDSHAKE, Reason.PLAINTEXT_ON_IMPLICIT_TLS_PORT)
    assert "use mode starttls" in result.failure.detail  # type: ignore[union-attr]


async def test_plaintext_injected_after_starttls_is_flagged_and_discarded(
    server_tls: ssl.SSLContext, ca_file: str
) -> None:
    result = await run(
        lambda r, w: smtp_session(
            r, w, server_tls, starttls_reply=b"220 2.0.0 go ahead\r\n250 injected\r\n"
        ),
        ca_file=ca_file,
    )
    assert result.success, result.failure
    assert result.smtp.plaintext_after_starttls is True
    assert any("injected" in e.text for e in result.transcript if e.kind == "info")


async def test_implicit_tls_server(server_tls: ssl.SSLContext, ca_file: str) -> None:
    async def implicit(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await w.start_tls(server_tls)
        await smtp_session(r, w, None, ehlo=b"250-mx.test\r\n250 AUTH PLAIN\r\n")

    result = await run(implicit, mode=Mode.IMPLICIT_TLS, ca_file=ca_file)
    assert result.success, result.failure
    assert result.smtp.starttls_advertised is None
    assert result.smtp.auth_after_tls == ("PLAIN",)
    assert result.phases.starttls is None and result.phases.tls_handshake is not None


async def test_untrusted_certificate_fails_only_when_verification_is_required(
    server_tls: ssl.SSLContext,
) -> None:
    async with serve(lambda r, w: smtp_session(r, w, server_tls)) as (host, port):
        base = {"ehlo_name": "probe.test", "server_name": "scripted.test", "timeout": 2.0}
        # the system store does not know the test CA
        required = await probe(Target.create(host, port, verify=VerifyPolicy.REQUIRED, **base))  # type: ignore[arg-type]
        reported = await probe(Target.create(host, port, verify=VerifyPolicy.REPORT, **base))  # type: ignore[arg-type]
    failed(required, Stage.CERTIFICATE, Reason.UNKNOWN_ISSUER)
    assert reported.success
    for result in (required, reported):
        assert result.certificate is not None  # facts are kept when verification fails
        assert result.verification is not None and not result.verification.trusted
        assert result.verification.hostname_match


async def test_internal_error_is_caught_and_named(server_tls: ssl.SSLContext) -> None:
    async with serve(lambda r, w: smtp_session(r, w, server_tls)) as (host, port):
        # a server name Python's ssl refuses to put in SNI: an error our code did not foresee
        target = Target.create(host, port, server_name="bad\x00name", ehlo_name="p.test")
        result = await probe(target)
    failed(result, Stage.INTERNAL, Reason.INTERNAL_ERROR)


@pytest.mark.parametrize(
    ("version", "label"),
    [(ssl.TLSVersion.TLSv1, "TLS 1.0"), (ssl.TLSVersion.TLSv1_1, "TLS 1.1")],
)
async def test_legacy_tls_server_is_described_not_refused(
    ca: trustme.CA, ca_file: str, version: ssl.TLSVersion, label: str
) -> None:
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy on purpose
        legacy.minimum_version = legacy.maximum_version = version
    legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
    ca.issue_cert("scripted.test", "127.0.0.1").configure_cert(legacy)
    result = await run(lambda r, w: smtp_session(r, w, legacy), ca_file=ca_file)
    assert result.success, result.failure
    assert result.tls is not None and result.tls.version == label


async def test_cancelled_while_waiting_for_quit_closes_the_connection(
    server_tls: ssl.SSLContext, ca_file: str
) -> None:
    # A reload or shutdown cancels a probe waiting for the 221: its socket must go at once, not
    # linger until the server hangs up (the reload storm test counts descriptors).
    got_quit, closed = asyncio.Event(), asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 mute.test ESMTP\r\n")
        while True:
            cmd = (await read_command(r)).upper()
            if cmd.startswith("EHLO"):
                w.write(b"250-mute.test\r\n250 STARTTLS\r\n")
            elif cmd == "STARTTLS":
                w.write(b"220 2.0.0 go ahead\r\n")
                await w.drain()
                await w.start_tls(server_tls)
            elif cmd == "QUIT":
                got_quit.set()  # and never answer
                try:
                    while await r.read(1024):
                        pass
                except (ConnectionError, ssl.SSLError):
                    pass
                closed.set()
                return

    async with serve(handler) as (host, port):
        target = Target.create(host, port, ca_file=ca_file, ehlo_name="probe.test", timeout=30)
        task = asyncio.create_task(probe(target))
        await asyncio.wait_for(got_quit.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 2)  # QUIT_TIMEOUT is 2 s: sooner than that
