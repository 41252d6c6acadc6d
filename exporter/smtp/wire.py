"""One SMTP connection on the wire: bounded reads, replies, writes, in-place TLS, and a transcript.

TLS runs over memory buffers (exporter.tls.session.ClientTls) rather than asyncio's `start_tls`,
so the probe sees the raw bytes: plaintext where a TLS record was expected (port 465 spoken to as
if it were 587), and plaintext the server sent after its 220 to STARTTLS (RFC 3207 section 4.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import cast

from OpenSSL import SSL

from exporter.model import TlsFacts
from exporter.smtp.reply import MAX_LINE, MAX_REPLY, Reply, ReplyError, take_reply
from exporter.tls.session import ClientTls, TlsFailure

MAX_TRANSCRIPT_ENTRIES = 200
MAX_TRANSCRIPT_TEXT = 2000
# Above this much undelivered plaintext the socket stops being read: take_reply refuses a reply
# this large anyway, so memory stays bounded whatever the server sends.
MAX_BUFFER = MAX_REPLY + MAX_LINE
RAW_PREFIX = 16
READ_SIZE = 16 * 1024  # bytes per read from the socket, and per read of decrypted data


class WireError(Exception):
    """A transport-level problem on an open connection."""


class ConnectionClosed(WireError):
    pass


class TlsError(WireError):
    """The TLS handshake failed. `raw_prefix` holds the first raw bytes the server sent since."""

    def __init__(self, message: str, raw_prefix: bytes) -> None:
        super().__init__(message)
        self.raw_prefix = raw_prefix


class Connection(asyncio.BufferedProtocol):
    """One SMTP connection as an asyncio protocol.

    The transport reads into one buffer per connection (BufferedProtocol: no bytes object per
    read). A waiting reader is woken only when what it waits for is there: a whole reply
    (parsed in the callback, so a reply arriving in pieces, or TLS records that carry no
    application data, cost no wake-up of the probe), an error, or the end of the connection.
    """

    def __init__(self, started: float) -> None:
        self._started = started
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._plain = bytearray()
        self._eof = False
        self._lost: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None  # handshake progress
        self._reply_waiter: asyncio.Future[Reply] | None = None
        self._paused = False
        self._ssl: ClientTls | None = None
        self._held = False  # our last handshake flight waits to leave with the next command
        self._handshaking = False
        self._tls_error: str | None = None
        self.tls_facts: TlsFacts | None = None  # version and cipher, once the handshake is done
        self._raw_prefix = bytearray()
        self.local_address: str | None = None
        self.received = 0  # bytes read from the socket, for "timed out after N bytes" details
        # (seconds since the probe started, kind, text) rows: exact tuples of atomic values, which
        # the garbage collector stops tracking; exporter.model.Transcript reads them.
        self.transcript: list[tuple[float, str, str]] = []

    # -- asyncio.BufferedProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: uvloop's TCP transport has the Transport methods without
        # deriving from asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        sockname = transport.get_extra_info("sockname")
        self.local_address = str(sockname[0]) if sockname else None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        data = self._view[:nbytes]
        try:
            if self._ssl is None:
                self._plain += data
            else:
                if len(self._raw_prefix) < RAW_PREFIX:
                    self._raw_prefix += data[: RAW_PREFIX - len(self._raw_prefix)]
                self._ssl.receive(data)
                if not self._handshaking:
                    self._decrypt()
        finally:
            data.release()
        if len(self._plain) > MAX_BUFFER and self._transport is not None and not self._paused:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._wake()

    # -- reading ----------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._reply_waiter
        if waiter is not None and not waiter.done():
            try:
                reply = self._take_reply()
            except ReplyError as exc:
                waiter.set_exception(exc)
                return
            if reply is not None:
                waiter.set_result(reply)
            elif self._eof:
                waiter.set_exception(self._closed())
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _decrypt(self) -> None:
        assert self._ssl is not None
        while True:
            try:
                chunk = self._ssl.read(READ_SIZE)
            except TlsFailure as exc:
                self._tls_error = str(exc)
                self._eof = True
                return
            if chunk is None:
                return
            if not chunk:  # the server's close_notify
                self._eof = True
                return
            self._plain += chunk

    @property
    def pending(self) -> bytes:
        """Bytes received and not yet consumed as a reply (at most a few KiB are shown)."""
        return bytes(self._plain[:4096])

    def _take_reply(self) -> Reply | None:
        """One complete reply off the buffer, or None. Raises ReplyError, ReplyTooLarge."""
        if not self._plain:
            return None
        reply, used = take_reply(self._plain)
        if reply is None:
            return None
        del self._plain[:used]
        if self._paused and len(self._plain) <= MAX_BUFFER and self._transport:
            self._transport.resume_reading()
            self._paused = False
        self._note("S", reply.render())
        return reply

    def _closed(self) -> ConnectionClosed:
        if self._tls_error is not None:
            return ConnectionClosed(f"TLS error while reading: {self._tls_error}")
        what = f" after {len(self._plain)} bytes of an unfinished reply" if self._plain else ""
        return ConnectionClosed(f"server closed the connection{what}")

    async def read_reply(self) -> Reply:
        """Wait for one complete reply. Raises ReplyError, ReplyTooLarge or ConnectionClosed."""
        if self._held:
            self._flush()  # our last handshake flight, held back by start_tls
        reply = self._take_reply()
        if reply is not None:
            return reply
        if self._eof:
            raise self._closed()
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._reply_waiter = waiter
        try:
            return await waiter
        finally:
            self._reply_waiter = None

    # -- writing ----------------------------------------------------------------------------

    def send(self, line: str) -> None:
        self._note("C", line)
        data = line.encode("ascii") + b"\r\n"
        if self._ssl is None:
            self._write_raw(data)
        else:
            self._encrypt(data)

    def send_pipelined(self, *lines: str) -> None:
        """Send command lines in one write. More than one only for the STARTTLS injection check
        (exporter.checks): the probe itself never pipelines."""
        for line in lines:
            self._note("C", line)
        data = b"".join(line.encode("ascii") + b"\r\n" for line in lines)
        if self._ssl is None:
            self._write_raw(data)
        else:
            self._encrypt(data)

    def _write_raw(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionClosed("connection already closed")
        self._transport.write(data)

    def _encrypt(self, data: bytes) -> None:
        assert self._ssl is not None
        try:
            self._ssl.write(data)
        except TlsFailure as exc:
            raise ConnectionClosed(f"TLS error while writing: {exc}") from None
        self._flush()

    def _flush(self) -> None:
        self._held = False
        data = self._ssl.outgoing() if self._ssl is not None else b""
        if data:
            self._write_raw(data)

    # -- TLS --------------------------------------------------------------------------------

    def take_unread(self) -> bytes:
        """Drop and return unconsumed plaintext: RFC 3207 section 4.2 says to discard it."""
        data = bytes(self._plain)
        self._plain.clear()
        if self._paused and self._transport:
            self._transport.resume_reading()
            self._paused = False
        return data

    async def start_tls(self, context: SSL.Context, server_name: str | None) -> None:
        """Run the TLS handshake in place. Raises TlsError or ConnectionClosed.

        Our last flight (TLS 1.3: the client Finished) is held back until the next command is
        sent, or until a reply is awaited: after STARTTLS it leaves in the same write as the
        EHLO, one system call and one wake-up of the server fewer."""
        self._raw_prefix.clear()
        tls = self._ssl = ClientTls(context, server_name)
        self._handshaking = True
        self._note("tls", f"handshake started (SNI {server_name or 'none'})")
        try:
            while True:
                try:
                    if tls.handshake():
                        break
                except TlsFailure as exc:
                    self._flush()  # let the server see our alert
                    raise TlsError(str(exc), bytes(self._raw_prefix)) from None
                self._flush()
                if self._eof:
                    raise TlsError(
                        "server closed the connection during the TLS handshake",
                        bytes(self._raw_prefix),
                    )
                await self._wait()
        finally:
            self._handshaking = False
        self._held = True
        facts = self.tls_facts = tls.facts()
        self._note("tls", f"handshake done: {facts.version} {facts.cipher}")
        # Bytes that arrived with the last handshake flight (an implicit-TLS greeting) wait here.
        self._decrypt()

    @property
    def tls(self) -> ClientTls | None:
        return self._ssl

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._ssl is not None and not self._handshaking and self._tls_error is None:
            self._ssl.close_notify()
            with contextlib.suppress(WireError):
                self._flush()
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- transcript -------------------------------------------------------------------------

    def note(self, kind: str, text: str) -> None:
        self._note(kind, text)

    def _note(self, kind: str, text: str) -> None:
        if len(self.transcript) >= MAX_TRANSCRIPT_ENTRIES:
            return
        if len(text) > MAX_TRANSCRIPT_TEXT:
            text = text[:MAX_TRANSCRIPT_TEXT] + f"... ({len(text)} characters)"
        self.transcript.append((time.monotonic() - self._started, kind, text))


def looks_like_tls(data: bytes) -> bool:
    """A TLS record header: handshake (22) or alert (21), protocol major version 3."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03
