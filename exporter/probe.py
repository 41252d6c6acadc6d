"""One probe of one SMTP endpoint: the dialogue, the TLS handshake, and plain data about both.

The dialogue is the minimum that shows a server's transport security: greeting, EHLO, STARTTLS,
handshake, EHLO again, QUIT. Never AUTH, MAIL, RCPT or DATA. Every failure is caught here once and
becomes a Failure(stage, reason, detail) from closed lists; an unexpected exception is
`internal_error` with its traceback logged, never an exception out of `probe()`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from OpenSSL import SSL

from exporter.addresses import probe_each_address
from exporter.model import (
    EMPTY_TRANSCRIPT,
    CertFacts,
    Failure,
    Mode,
    Phases,
    ProbeResult,
    Reason,
    SmtpFacts,
    Stage,
    Target,
    TlsFacts,
    Transcript,
    Verification,
    VerifyPolicy,
    VerifyReason,
)
from exporter.resolve import Addresses, ResolveError, Resolver, literal, system_resolve
from exporter.smtp.reply import Ehlo, Reply, ReplyError, ReplyTooLarge, parse_ehlo
from exporter.smtp.wire import Connection, ConnectionClosed, TlsError, looks_like_tls
from exporter.tls import chaincache, session
from exporter.tls.verify import TrustStoreError, load_trust_store

log = logging.getLogger(__name__)

T = TypeVar("T")

QUIT_TIMEOUT = 2.0


class _Stop(Exception):
    """Ends the dialogue with a failure."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@functools.lru_cache(maxsize=1)
def machine_fqdn() -> str | None:
    """The machine's FQDN for EHLO (RFC 5321 section 4.1.1.1), or None when it has no dot."""
    name = socket.getfqdn()
    return name if "." in name and not name.endswith(".localdomain") else None


async def probe(
    target: Target, *, resolver: Resolver | None = None, timeout: float | None = None
) -> ProbeResult:
    """Probe `target` once, within `timeout` (default: the target's). Never raises (except on
    cancellation). A target with `all_addresses` is probed at each of its addresses.

    `resolver` looks up host names (default: the system's getaddrinfo)."""
    if target.all_addresses and target.address is None:
        return await probe_each_address(target, resolver or system_resolve, probe)
    run = _Run(target, resolver or system_resolve, target.timeout if timeout is None else timeout)
    try:
        async with asyncio.timeout(run.timeout):
            await run.dialogue()
    except TimeoutError:
        run.fail(Reason.TIMEOUT, run.timeout_detail())
    except _Stop as stop:
        run.fail(stop.reason, stop.detail)
    except Exception as exc:
        log.exception("internal error probing %s", target.name)
        run.stage = Stage.INTERNAL
        run.fail(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        run.abort()
        raise
    if run.failure is None:
        await run.quit()
    else:
        run.abort()
    return run.result()


@dataclass
class _Run:
    """One dialogue's state and steps; the opt-in checks (exporter.checks) reuse the steps."""

    target: Target
    resolver: Resolver
    timeout: float  # seconds for the whole dialogue
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    stage: Stage = Stage.RESOLVE
    failure: Failure | None = None
    conn: Connection | None = None
    peer_address: str | None = None
    address_family: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    greeting: Reply | None = None
    ehlo_before: Ehlo | None = None
    ehlo_after: Ehlo | None = None
    plaintext_after_starttls: bool = False
    tls: TlsFacts | None = None
    chain: tuple[CertFacts, ...] = ()
    chain_der: tuple[bytes, ...] = ()
    verification: Verification | None = None

    # -- the dialogue -----------------------------------------------------------------------

    async def dialogue(self) -> None:
        t = self.target
        addresses = await self._timed(Stage.RESOLVE, "resolve", self._resolve())
        await self._timed(Stage.CONNECT, "connect", self._connect(addresses))
        if t.mode is Mode.IMPLICIT_TLS:
            await self._timed(Stage.TLS_HANDSHAKE, "tls_handshake", self._handshake())
        self.greeting = await self._timed(Stage.GREETING, "greeting", self._read_greeting())
        if t.mode is Mode.IMPLICIT_TLS:
            self.ehlo_after = await self._timed(Stage.EHLO_TLS, "ehlo", self._ehlo())
            self._check_certificate()
            return
        self.ehlo_before = await self._timed(Stage.EHLO, "ehlo", self._ehlo())
        if not self.ehlo_before.starttls:
            self.stage = Stage.STARTTLS
            raise _Stop(Reason.STARTTLS_NOT_ADVERTISED, "the EHLO reply does not offer STARTTLS")
        await self._timed(Stage.STARTTLS, "starttls", self._starttls())
        await self._timed(Stage.TLS_HANDSHAKE, "tls_handshake", self._handshake())
        # RFC 3207 section 4.2: forget everything learnt before TLS and ask again.
        self.ehlo_after = await self._timed(Stage.EHLO_TLS, "ehlo", self._ehlo())
        self._check_certificate()

    async def _timed(self, stage: Stage, phase: str, step: Awaitable[T]) -> T:
        self.stage = stage
        start = time.monotonic()
        try:
            return await step
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.monotonic() - start

    async def _resolve(self) -> Addresses:
        host = self.target.host
        addresses = literal(self.target.address or host)
        if addresses is not None:
            return addresses
        try:
            addresses = await self.resolver(host, self.target.port)
        except ResolveError as exc:
            raise _Stop(
                Reason.TIMEOUT if exc.timeout else Reason.NAME_NOT_RESOLVED, str(exc)
            ) from exc
        if not addresses:
            raise _Stop(Reason.NAME_NOT_RESOLVED, f"{host}: no address")
        return addresses

    async def _connect(self, addresses: Addresses) -> None:
        loop = asyncio.get_running_loop()
        last: _Stop | None = None
        for family, address in addresses:
            conn = Connection(self.started)
            self.peer_address = address
            self.address_family = "ipv6" if family == socket.AF_INET6 else "ipv4"
            try:
                await loop.create_connection(lambda c=conn: c, address, self.target.port)  # type: ignore[misc]
            except OSError as exc:
                last = _connect_failure(exc, address, self.target.port)
                continue
            self.conn = conn
            conn.note("info", f"connected to {address} port {self.target.port}")
            return
        assert last is not None
        raise last

    async def _read_greeting(self) -> Reply:
        reply = await self._reply()
        if not reply.is_positive:
            raise _Stop(Reason.GREETING_REJECTED, f"greeting {reply.render()!r}")
        return reply

    async def _ehlo(self) -> Ehlo:
        name = self.target.ehlo_name or machine_fqdn() or self._address_literal()
        conn = self._conn()
        conn.send(f"EHLO {name}")
        reply = await self._reply()
        if not reply.is_positive:
            raise _Stop(Reason.EHLO_REJECTED, f"EHLO answered {reply.render()!r}")
        return parse_ehlo(reply)

    async def _starttls(self) -> None:
        conn = self._conn()
        conn.send("STARTTLS")
        reply = await self._reply()
        if reply.code != 220:
            raise _Stop(Reason.STARTTLS_REJECTED, f"STARTTLS answered {reply.render()!r}")
        # RFC 3207 section 4.2: anything after the 220 and before TLS is discarded; its presence
        # means a broken server or someone on the path injecting commands' replies.
        unread = conn.take_unread()
        if unread:
            self.plaintext_after_starttls = True
            conn.note(
                "info", f"discarded {len(unread)} plaintext bytes sent after 220: {unread[:80]!r}"
            )

    async def _handshake(self, context: SSL.Context | None = None) -> None:
        conn = self._conn()
        name = self.target.server_name
        try:
            await conn.start_tls(context or session.client_context(), _sni(name))
        except TlsError as exc:
            prefix = exc.raw_prefix
            if prefix and not looks_like_tls(prefix):
                if self.target.mode is Mode.IMPLICIT_TLS:
                    raise _Stop(
                        Reason.PLAINTEXT_ON_IMPLICIT_TLS_PORT,
                        f"the server answered in plaintext ({prefix!r}) where TLS was expected: "
                        "this port speaks SMTP first; use mode starttls",
                    ) from exc
                raise _Stop(
                    Reason.TLS_HANDSHAKE_FAILED,
                    f"plaintext {prefix!r} instead of TLS after STARTTLS",
                ) from exc
            raise _Stop(Reason.TLS_HANDSHAKE_FAILED, str(exc)) from exc
        tls = conn.tls
        assert tls is not None and conn.tls_facts is not None
        self.tls = conn.tls_facts
        self._read_certificates(tls.chain())

    def _read_certificates(self, ders: list[bytes]) -> None:
        chain = chaincache.read_chain(ders)
        self.chain_der = chain.der  # the memo's copy: equal bytes, kept once for every result
        if chain.problem is not None:
            self._conn().note("tls", f"unreadable certificate in the served chain: {chain.problem}")
        self.chain = chain.facts
        try:
            trust = load_trust_store(self.target.ca_file)
        except TrustStoreError as exc:
            self.verification = Verification(False, False, VerifyReason.UNTRUSTED, str(exc))
            return
        self.verification = chaincache.verify_chain(
            chain, self.target.server_name, trust, time.time()
        )
        self._conn().note(
            "tls",
            f"certificate: trusted={self.verification.trusted} "
            f"name_match={self.verification.hostname_match} "
            f"reason={self.verification.reason} {self.verification.detail}".rstrip(),
        )

    def _check_certificate(self) -> None:
        v = self.verification
        if v is None or v.reason is VerifyReason.OK:
            return
        if self.target.verify is VerifyPolicy.REQUIRED:
            self.stage = Stage.CERTIFICATE
            raise _Stop(Reason(v.reason.value), v.detail)

    async def quit(self) -> None:
        """QUIT politely; its outcome never changes the verdict."""
        conn = self.conn
        remaining = self.timeout - (time.monotonic() - self.started)
        if conn is None:
            return
        if remaining > 0:
            try:
                async with asyncio.timeout(min(QUIT_TIMEOUT, remaining)):
                    conn.send("QUIT")
                    await conn.read_reply()
            except (TimeoutError, ConnectionClosed, ReplyError) as exc:
                conn.note("info", f"no reply to QUIT: {exc or type(exc).__name__}")
            except asyncio.CancelledError:
                conn.abort()  # cancelled while waiting for the 221: the socket must not linger
                raise
        conn.close()

    def abort(self) -> None:
        if self.conn is not None:
            self.conn.abort()

    # -- helpers ----------------------------------------------------------------------------

    def _conn(self) -> Connection:
        assert self.conn is not None
        return self.conn

    async def _reply(self) -> Reply:
        conn = self._conn()
        try:
            return await conn.read_reply()
        except ReplyTooLarge as exc:
            raise _Stop(Reason.REPLY_TOO_LARGE, str(exc)) from exc
        except ReplyError as exc:
            if self.stage is Stage.GREETING and looks_like_tls(conn.pending):
                raise _Stop(
                    Reason.TLS_ON_STARTTLS_PORT,
                    "the server sent TLS where an SMTP greeting was expected: "
                    "this port speaks implicit TLS; use mode implicit_tls",
                ) from exc
            raise _Stop(Reason.PROTOCOL_ERROR, str(exc)) from exc
        except ConnectionClosed as exc:
            raise _Stop(Reason.CONNECTION_CLOSED, str(exc)) from exc

    def _address_literal(self) -> str:
        transport_ip = "127.0.0.1"
        if self.conn is not None and self.conn.local_address:
            transport_ip = self.conn.local_address
        return f"[IPv6:{transport_ip}]" if ":" in transport_ip else f"[{transport_ip}]"

    def timeout_detail(self) -> str:
        received = self.conn.received if self.conn is not None else 0
        detail = f"no answer within the {self.timeout:g}s deadline during {self.stage}"
        if self.conn is not None:
            detail += f" ({received} bytes received in all)"
        if self.stage is Stage.GREETING and received == 0 and self.target.mode is Mode.STARTTLS:
            detail += "; an implicit-TLS port (465) also stays silent: try mode implicit_tls"
        return detail

    def fail(self, reason: Reason, detail: str) -> None:
        self.failure = Failure(self.stage, reason, detail)
        if self.conn is not None:
            self.conn.note("info", f"probe failed at {self.stage}: {reason}: {detail}")

    def result(self) -> ProbeResult:
        p = self.phases
        ehlo = self.ehlo_before if self.target.mode is Mode.STARTTLS else None
        after = self.ehlo_after
        smtp = SmtpFacts(
            greeting_code=self.greeting.code if self.greeting else None,
            greeting=self.greeting.text if self.greeting else "",
            starttls_advertised=ehlo.starttls if ehlo else None,
            auth_before_tls=ehlo.auth_mechanisms if ehlo else (),
            extensions_before_tls=tuple(ehlo.extensions) if ehlo else (),
            extensions_after_tls=tuple(after.extensions) if after else (),
            auth_after_tls=after.auth_mechanisms if after else (),
            plaintext_after_starttls=self.plaintext_after_starttls,
        )
        return ProbeResult(
            target=self.target,
            started_at=self.started_wall,
            success=self.failure is None,
            failure=self.failure,
            peer_address=self.peer_address,
            address_family=self.address_family,
            phases=Phases(
                resolve=p.get("resolve"),
                connect=p.get("connect"),
                greeting=p.get("greeting"),
                ehlo=p.get("ehlo"),
                starttls=p.get("starttls"),
                tls_handshake=p.get("tls_handshake"),
                total=time.monotonic() - self.started,
            ),
            smtp=smtp,
            tls=self.tls,
            certificate=self.chain[0] if self.chain else None,
            chain=self.chain,
            chain_der=self.chain_der,
            verification=self.verification,
            transcript=Transcript.of_rows(self.conn.transcript) if self.conn else EMPTY_TRANSCRIPT,
        )


@functools.lru_cache(maxsize=16384)  # the config's server names: asked at every probe
def _sni(name: str) -> str | None:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.rstrip(".")
    return None  # RFC 6066 section 3: no IP literals in SNI


def _connect_failure(exc: OSError, address: str, port: int) -> _Stop:
    where = f"{address} port {port}"
    if isinstance(exc, ConnectionRefusedError):
        return _Stop(Reason.CONNECTION_REFUSED, f"{where}: connection refused")
    if isinstance(exc, TimeoutError):
        return _Stop(Reason.TIMEOUT, f"{where}: the operating system gave up connecting")
    if exc.errno in (
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
    ):
        return _Stop(Reason.UNREACHABLE, f"{where}: {exc.strerror}")
    return _Stop(Reason.CONNECTION_ERROR, f"{where}: {exc.strerror or exc}")
