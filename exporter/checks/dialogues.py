"""The dialogues of the opt-in checks, on the probe's steps (exporter.probe._Run).

Each check is a connection of its own, so whatever a server does to a check (refuse a pipelined
STARTTLS, hang up after an old ClientHello, answer MAIL FROM) never changes the probe's verdict.
Every dialogue opens like the probe (greeting, EHLO) and sends only what is listed here; never
AUTH, RCPT or DATA. A step that fails before the check has its answer raises _Stop: no verdict.
"""

from __future__ import annotations

import asyncio
import time

from exporter.model import Mode, Reason, Stage
from exporter.probe import _Run, _Stop
from exporter.smtp.reply import ReplyError
from exporter.smtp.wire import ConnectionClosed
from exporter.tls import session

# Seconds to wait, after the handshake, for a reply to the NOOP sent before it. A vulnerable
# server answers as soon as TLS is up, one round trip after our last handshake message; never
# more than half of what is left of the check's timeout, so QUIT still fits.
INJECTION_WAIT = 2.0


class CheckDialogue(_Run):
    """A probe dialogue that stops where its check has its answer. `close_only` is set when the
    connection cannot carry a QUIT any more (a refused handshake)."""

    close_only: bool = False

    async def open(self) -> None:
        """Resolve (or take the pinned address), connect, greeting, and for STARTTLS the EHLO."""
        addresses = await self._timed(Stage.RESOLVE, "resolve", self._resolve())
        await self._timed(Stage.CONNECT, "connect", self._connect(addresses))
        if self.target.mode is Mode.STARTTLS:
            self.greeting = await self._timed(Stage.GREETING, "greeting", self._read_greeting())
            self.ehlo_before = await self._timed(Stage.EHLO, "ehlo", self._ehlo())

    def need_starttls(self) -> None:
        assert self.ehlo_before is not None
        if not self.ehlo_before.starttls:
            self.stage = Stage.STARTTLS
            raise _Stop(Reason.STARTTLS_NOT_ADVERTISED, "the EHLO reply does not offer STARTTLS")

    def remaining(self) -> float:
        return self.timeout - (time.monotonic() - self.started)


class Injection(CheckDialogue):
    """RFC 3207 section 4.2, CVE-2011-0411: `STARTTLS` and `NOOP` in one write. A server that
    keeps the plaintext NOOP buffered across the upgrade answers it inside TLS before the client
    says anything there: whoever can write to the plaintext connection can then speak inside TLS.

    Sends: EHLO, STARTTLS+NOOP (one write), the TLS handshake, QUIT."""

    async def vulnerable(self, wait: float = INJECTION_WAIT) -> bool:
        await self.open()
        self.need_starttls()
        conn = self._conn()
        self.stage = Stage.STARTTLS
        conn.send_pipelined("STARTTLS", "NOOP")
        reply = await self._reply()
        if reply.code != 220:
            # Exim, for one, refuses a STARTTLS with commands behind it: nothing is injected.
            conn.note("info", f"STARTTLS with NOOP behind it refused: {reply.render()!r}")
            try:  # the NOOP's reply, if it comes, so that QUIT gets its own
                async with asyncio.timeout(min(wait, self.remaining() / 2)):
                    await self._reply()
            except TimeoutError:
                pass
            except _Stop:
                self.close_only = True
            return False
        unread = conn.take_unread()
        if unread:
            # Answered before TLS, in plaintext: processed there, not carried into TLS.
            conn.note("info", f"discarded plaintext after 220 (RFC 3207 4.2): {unread[:80]!r}")
        self.stage = Stage.TLS_HANDSHAKE
        await self._handshake()
        return await self._unsolicited(min(wait, self.remaining() / 2))

    async def _unsolicited(self, wait: float) -> bool:
        """Whether the server speaks inside TLS before we do, within `wait` seconds. A server
        never sends first after STARTTLS (RFC 3207 section 4.2): any bytes are the NOOP's
        answer, or at least the sign that plaintext crossed into TLS."""
        conn = self._conn()
        try:
            async with asyncio.timeout(wait):
                reply = await conn.read_reply()
        except TimeoutError:
            if conn.pending:
                conn.note("info", f"inside TLS before any command: {conn.pending[:80]!r}")
                return True
            conn.note("info", f"nothing inside TLS in {wait:.3g}s: the NOOP was not carried over")
            return False
        except ConnectionClosed:
            self.close_only = True
            if conn.pending:
                conn.note("info", f"inside TLS before any command: {conn.pending[:80]!r}")
                return True
            conn.note("info", "the server closed the connection after the handshake, unasked")
            return False
        except ReplyError as exc:
            conn.note("info", f"inside TLS before any command, no SMTP reply: {exc}")
            self.close_only = True
            return True
        conn.note("info", f"the NOOP sent before TLS was answered inside TLS: {reply.render()!r}")
        return True


class Protocol(CheckDialogue):
    """Whether the server completes a handshake that offers `version` only.

    Sends: EHLO and STARTTLS (starttls mode), a ClientHello for that version only; after a
    completed handshake QUIT (implicit TLS: after the greeting). A refused handshake ends the
    connection there."""

    async def accepts(self, version: str) -> bool:
        context = session.pinned_context(version)  # VersionUnavailable: no verdict
        await self.open()
        if self.target.mode is Mode.STARTTLS:
            self.need_starttls()
            await self._timed(Stage.STARTTLS, "starttls", self._starttls())
        self.stage = Stage.TLS_HANDSHAKE
        try:
            await self._handshake(context)
        except _Stop as stop:
            if stop.reason is not Reason.TLS_HANDSHAKE_FAILED:
                raise
            self.close_only = True
            self._conn().note("info", f"{version} refused: {stop.detail}")
            return False
        assert self.tls is not None
        accepted = self.tls.version == version  # min = max = version: anything else is a bug
        if self.target.mode is Mode.IMPLICIT_TLS:
            await self._polite_greeting()
        return accepted

    async def _polite_greeting(self) -> None:
        """RFC 5321 section 3.1: wait for the greeting before QUIT; if it does not come, close."""
        try:
            async with asyncio.timeout(self.remaining() / 2):
                self.greeting = await self._read_greeting()
        except (TimeoutError, _Stop):
            self.close_only = True


class Submission(CheckDialogue):
    """RFC 8314 section 4 (and RFC 3207 section 4): a submission server that requires TLS offers
    no AUTH before it and refuses a transaction with 530 (5.7.0 Must issue a STARTTLS command
    first). Requires TLS: AUTH not offered, and MAIL FROM answered 530, or 5xx with 5.7.0.

    Sends: EHLO; unless AUTH is offered, MAIL FROM:<> (the null sender) then RSET; QUIT."""

    async def requires_tls(self) -> bool:
        await self.open()
        assert self.ehlo_before is not None
        conn = self._conn()
        if self.ehlo_before.auth_mechanisms:
            mechanisms = " ".join(self.ehlo_before.auth_mechanisms)
            conn.note("info", f"AUTH {mechanisms} offered before TLS: MAIL FROM not sent")
            return False
        self.stage = Stage.MAIL_FROM
        conn.send("MAIL FROM:<>")
        reply = await self._reply()
        refused = reply.code == 530 or (reply.code >= 500 and reply.enhanced == "5.7.0")
        # RSET whatever the answer: an accepted MAIL FROM opened a transaction.
        conn.send("RSET")
        try:
            await self._reply()
        except _Stop as stop:  # the verdict stands; the connection is of no further use
            self.close_only = True
            conn.note("info", f"no reply to RSET: {stop.detail}")
        return refused
