"""Small scripted SMTP servers on loopback, for the faults no real server produces on demand."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    """Run `handler` for every connection on an ephemeral loopback port; yields (host, port)."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the test is over and the server is shutting down
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(on_client, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield host, port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_command(reader: asyncio.StreamReader) -> str:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("client went away")
    return line.decode("ascii", "replace").rstrip("\r\n")


async def smtp_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tls: ssl.SSLContext | None,
    *,
    greeting: bytes = b"220 scripted.test ESMTP\r\n",
    ehlo: bytes = b"250-scripted.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
    ehlo_tls: bytes = b"250-scripted.test\r\n250 AUTH PLAIN\r\n",
    starttls_reply: bytes = b"220 2.0.0 go ahead\r\n",
) -> None:
    """A well-behaved STARTTLS server whose replies a test can replace one by one."""
    writer.write(greeting)
    in_tls = False
    while True:
        cmd = (await read_command(reader)).upper()
        if cmd.startswith("EHLO"):
            writer.write(ehlo_tls if in_tls else ehlo)
        elif cmd == "STARTTLS" and tls is not None and not in_tls:
            writer.write(starttls_reply)
            await writer.drain()
            if not starttls_reply.startswith(b"220"):
                continue
            await writer.start_tls(tls)
            in_tls = True
        elif cmd == "QUIT":
            writer.write(b"221 2.0.0 bye\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"502 5.5.2 not here\r\n")
        await writer.drain()
