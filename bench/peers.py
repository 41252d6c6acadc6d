"""The bench's peers: a fast scripted SMTP server over thousands of loopback endpoints, and Postfix.

The scripted server runs in worker processes (one per core by default), each owning a share of the
endpoints: one listening socket per (127.B.x.y, port). Each worker is one event loop (uvloop when
installed) whose sessions run TLS through `ssl.SSLObject` over memory BIOs, the cheapest TLS path
Python has, so that the server costs as little CPU as possible next to the client being measured.
A session speaks just what a probe needs: greeting, EHLO, STARTTLS, EHLO, QUIT (or TLS first on
implicit-TLS ports). Every accepted connection is logged as (endpoint index, CLOCK_MONOTONIC
seconds), which is how the bench sees when each target was probed without asking the exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.certs import SERVER_NAME, TestPKI  # noqa: E402

STARTTLS_PORTS = (2525, 2587, 2588)
IMPLICIT_PORTS = (2465,)
PORTS = STARTTLS_PORTS + IMPLICIT_PORTS
MAX_BUFFER = 64 * 1024

GREETING = b"220 " + SERVER_NAME.encode() + b" ESMTP bench\r\n"
_EHLO_COMMON = [b"PIPELINING", b"SIZE 10240000", b"ENHANCEDSTATUSCODES", b"8BITMIME"]


def _multiline(first: bytes, items: list[bytes]) -> bytes:
    lines = [first, *items]
    out = [b"250-" + line + b"\r\n" for line in lines[:-1]]
    return b"".join(out) + b"250 " + lines[-1] + b"\r\n"


# STARTTLS is not the last line on purpose: line-by-line matchers (blackbox_exporter's
# query_response) must meet it as "250-STARTTLS".
EHLO_PLAIN = _multiline(SERVER_NAME.encode(), [b"PIPELINING", b"STARTTLS", *_EHLO_COMMON[1:]])
EHLO_TLS = _multiline(SERVER_NAME.encode(), [b"PIPELINING", b"AUTH PLAIN LOGIN", *_EHLO_COMMON[1:]])


@dataclass(frozen=True)
class Endpoint:
    index: int
    host: str
    port: int
    implicit: bool

    @property
    def mode(self) -> str:
        return "implicit_tls" if self.implicit else "starttls"


def endpoints(count: int, second_octet: int = 77) -> list[Endpoint]:
    """`count` endpoints: 127.B.x.y (y 1..250) times PORTS, address-major, 3/4 STARTTLS."""
    out = []
    for i in range(count):
        addr, slot = divmod(i, len(PORTS))
        host = f"127.{second_octet}.{addr // 250}.{addr % 250 + 1}"
        port = PORTS[slot]
        out.append(Endpoint(i, host, port, port in IMPLICIT_PORTS))
    return out


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_file: str  # the root alone: the trust anchor
    cert_file: str  # leaf + intermediate
    key_file: str


def make_pki(directory: Path) -> Pki:
    """A root, an intermediate and an EC P-256 leaf for SERVER_NAME, as Postfix's test PKI."""
    pki = TestPKI()
    ca = pki.write_ca_bundle(directory / "ca.pem")
    cert, key = pki.leaf().write(directory, "bench-server")
    return Pki(directory, str(ca), str(cert), str(key))


def server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert_file, pki.key_file)
    return ctx


# -- one session ----------------------------------------------------------------------------


class _Session(asyncio.Protocol):
    __slots__ = ("_buf", "_done", "_implicit", "_in", "_out", "_shaking", "_ssl", "_t", "_w")

    def __init__(self, worker: _Worker, index: int, implicit: bool) -> None:
        self._w = worker
        self._implicit = implicit
        self._t: Any = None
        self._buf = b""
        self._ssl: ssl.SSLObject | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._shaking = False
        self._done = False
        worker.log.append((index, time.monotonic()))
        worker.accepted += 1

    def connection_made(self, transport: Any) -> None:
        self._t = transport
        if self._implicit:
            self._start_tls(b"")
        else:
            transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        try:
            if self._ssl is None:
                self._plain(data)
            else:
                assert self._in is not None
                self._in.write(data)
                if self._shaking:
                    self._handshake()
                if not self._shaking:
                    self._read_tls()
        except ssl.SSLError:
            self._w.tls_errors += 1
            self._t.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._t = None

    def _plain(self, data: bytes) -> None:
        self._buf += data
        while self._ssl is None and not self._done:
            line, sep, rest = self._buf.partition(b"\n")
            if not sep:
                if len(self._buf) > MAX_BUFFER:
                    self._t.abort()
                return
            self._buf = rest
            if self._command(line.strip().upper()):
                self._start_tls(self._buf)
                self._buf = b""

    def _command(self, cmd: bytes) -> bool:
        """Answer one command; True when TLS starts now (after our 220 to STARTTLS)."""
        if cmd.startswith((b"EHLO", b"HELO")):
            self._send(EHLO_TLS if self._ssl is not None else EHLO_PLAIN)
        elif cmd == b"STARTTLS" and self._ssl is None:
            self._send(b"220 2.0.0 Ready to start TLS\r\n")
            return True
        elif cmd == b"QUIT":
            self._send(b"221 2.0.0 Bye\r\n")
            self._w.quits += 1
            self._done = True
            self._close()
        elif cmd in (b"NOOP", b"RSET"):
            self._send(b"250 2.0.0 Ok\r\n")
        else:
            self._send(b"502 5.5.2 Error: command not recognized\r\n")
        return False

    def _send(self, data: bytes) -> None:
        if self._ssl is None:
            self._t.write(data)
        else:
            self._ssl.write(data)
            self._flush()

    def _flush(self) -> None:
        assert self._out is not None
        data = self._out.read()
        if data and self._t is not None:
            self._t.write(data)

    def _start_tls(self, pending: bytes) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = self._w.ctx.wrap_bio(self._in, self._out, server_side=True)
        self._shaking = True
        if pending:
            self._in.write(pending)
            self._handshake()

    def _handshake(self) -> None:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        self._shaking = False
        self._w.handshakes += 1
        self._flush()
        if self._implicit:
            self._send(GREETING)

    def _read_tls(self) -> None:
        assert self._ssl is not None
        chunks = []
        while True:
            try:
                chunk = self._ssl.read(16384)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._close()
                return
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return
        self._buf += b"".join(chunks)
        while not self._done:
            line, sep, rest = self._buf.partition(b"\n")
            if not sep:
                if len(self._buf) > MAX_BUFFER:
                    self._t.abort()
                return
            self._buf = rest
            self._command(line.strip().upper())

    def _close(self) -> None:
        if self._t is not None:
            self._t.close()


# -- one worker process ---------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.log: list[tuple[int, float]] = []
        self.accepted = 0
        self.handshakes = 0
        self.quits = 0
        self.tls_errors = 0

    def stats(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "handshakes": self.handshakes,
            "quits": self.quits,
            "tls_errors": self.tls_errors,
        }


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else wanted
    if soft < min(wanted, target):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, target), hard))


def _worker_main(
    mine: list[Endpoint], pki: Pki, pipe: multiprocessing.connection.Connection, uv: bool
) -> None:
    """Bind every endpoint of `mine`, report ready, then serve until told to stop."""
    if uv:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    _raise_nofile(len(mine) + 4096)
    loop = asyncio.new_event_loop()
    worker = _Worker(server_context(pki))
    servers = []
    try:
        for ep in mine:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ep.host, ep.port))
            except OSError as exc:
                sock.close()
                raise OSError(f"cannot bind {ep.host}:{ep.port}: {exc.strerror}") from exc
            sock.listen(1024)
            sock.setblocking(False)

            def factory(ep: Endpoint = ep) -> _Session:
                return _Session(worker, ep.index, ep.implicit)

            servers.append(loop.run_until_complete(loop.create_server(factory, sock=sock)))
    except OSError as exc:
        pipe.send(("error", str(exc)))
        return
    pipe.send(("ready", len(servers)))

    def on_command() -> None:
        try:
            cmd = pipe.recv()
        except EOFError:
            loop.stop()
            return
        if cmd == "stats":
            pipe.send(worker.stats())
        elif cmd == "drain":
            log, worker.log = worker.log, []
            pipe.send((worker.stats(), log))
        else:
            loop.stop()

    loop.add_reader(pipe.fileno(), on_command)
    try:
        loop.run_forever()
    finally:
        for server in servers:
            server.close()
        loop.close()


class ScriptedServer:
    """Worker processes serving `eps`; `drain()` collects the accept log from all of them."""

    def __init__(self, eps: list[Endpoint], pki: Pki, workers: int, uv: bool = True) -> None:
        self.endpoints = eps
        ctx = multiprocessing.get_context("fork")
        self._procs: list[tuple[Any, multiprocessing.connection.Connection]] = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(eps[w::workers], pki, child, uv), daemon=True
            )
            proc.start()
            child.close()
            self._procs.append((proc, parent))
        deadline = time.monotonic() + 120
        for _, pipe in self._procs:
            if not pipe.poll(max(0.1, deadline - time.monotonic())):
                self.stop()
                raise RuntimeError("a server worker did not start in time")
            status, detail = pipe.recv()
            if status != "ready":
                self.stop()
                raise RuntimeError(f"server worker: {detail}")

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self._procs]

    def drain(self) -> tuple[dict[str, int], list[tuple[int, float]]]:
        total: dict[str, int] = {}
        log: list[tuple[int, float]] = []
        for _, pipe in self._procs:
            pipe.send("drain")
        for _, pipe in self._procs:
            stats, part = pipe.recv()
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
            log.extend(part)
        return total, log

    def stop(self) -> None:
        for _, pipe in self._procs:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send("stop")
        for proc, pipe in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            pipe.close()
        self._procs = []


# -- Postfix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostfixPeer:
    starttls: Endpoint  # the relay_25 listener
    implicit: Endpoint  # the smtps_465 listener
    ca_file: str
    version: str


@contextlib.contextmanager
def postfix() -> Iterator[PostfixPeer | None]:
    """The tests' real Postfix instance (tests/fixtures/postfix.py), or None when unavailable."""
    import _pytest.outcomes

    from tests.fixtures import postfix as pf

    reason = pf.unavailable_reason()
    if reason is not None:
        print(f"postfix: skipped ({reason})", file=sys.stderr)
        yield None
        return
    run_dir = Path(tempfile.mkdtemp(prefix="smtp-tls-bench-postfix-"))
    run_dir.chmod(0o755)
    changed: list[tuple[Path, int]] = []
    watchdog = None
    try:
        try:
            server = pf.prepare_instance(run_dir)
            changed = pf.open_path_for_mail_owner(run_dir)
            watchdog = pf.start_watchdog(server.config_dir)
            pf.start_postfix(server)
        except _pytest.outcomes.Failed as exc:
            print(f"postfix: skipped ({exc})", file=sys.stderr)
            yield None
            return
        relay, smtps = server.listener("relay_25"), server.listener("smtps_465")
        version = os.popen("postconf -d -h mail_version 2>/dev/null").read().strip()
        yield PostfixPeer(
            Endpoint(-1, relay.host, relay.port, False),
            Endpoint(-2, smtps.host, smtps.port, True),
            server.ca_file,
            version or "?",
        )
    finally:
        pf.stop_postfix(str(run_dir / "conf"), run_dir / "queue")
        if watchdog is not None:
            pf.dismiss_watchdog(watchdog)
        pf.restore_modes(changed)
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
