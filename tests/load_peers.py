"""Scripted SMTP peers for the load test, in a process of their own: the exporter is measured alone.

    python -m tests.load_peers --cert CERT --key KEY --prefix 127.61 --hosts good=40,slow=10,...

Each host is one loopback address (PREFIX.K.1) running one kind of server on one port; the
process prints one JSON line {"kind": [["127.61.1.1", port], ...], ...} when every server
listens, and runs until its standard input closes. Kinds:

    good      a well-behaved STARTTLS server (the TLS certificate given)
    slow      the same, after a greeting delay of 0.2 to 1 s (postscreen-like)
    dead      nothing listens: a bound port that refuses connections
    tarpit    accepts and never sends a byte
    garbage   sends bytes that are not SMTP, then closes
    oversized a reply far over the probe's limits, line after line
    busy      421 at the greeting (the exporter backs off)
    reset     half a greeting, then a TCP reset
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import ssl
import struct
import sys

from tests.scripted import smtp_session


async def good(r: asyncio.StreamReader, w: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    await smtp_session(r, w, tls)


async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    await asyncio.sleep(random.uniform(0.2, 1.0))  # the peer's behaviour, not a synchronisation
    await smtp_session(r, w, tls)


async def tarpit(r: asyncio.StreamReader, w: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    await r.read()  # until the prober gives up and closes


async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    w.write(bytes(random.getrandbits(8) for _ in range(300)) + b"\r\n")
    await w.drain()


async def oversized(r: asyncio.StreamReader, w: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    line = b"220-" + b"x" * 500 + b"\r\n"
    for _ in range(300):  # 150 KB: past the probe's 64 KiB and 100-line limits
        w.write(line)
        await w.drain()


async def busy(r: asyncio.StreamReader, w: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    w.write(b"421 4.7.0 too busy, try later\r\n")
    await w.drain()


async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    w.write(b"220-half a greeting\r\n")
    await w.drain()
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


KINDS = {
    "good": good,
    "slow": slow,
    "tarpit": tarpit,
    "garbage": garbage,
    "oversized": oversized,
    "busy": busy,
    "reset": reset,
}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--prefix", default="127.61")
    p.add_argument("--hosts", required=True, help="kind=count,... (dead too)")
    args = p.parse_args()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    counts = {k: int(n) for k, n in (item.split("=") for item in args.hosts.split(","))}
    out: dict[str, list[tuple[str, int]]] = {}
    servers = []
    refusing = []
    index = 0
    for kind, count in counts.items():
        for _ in range(count):
            index += 1
            host = f"{args.prefix}.{index // 250}.{index % 250 + 1}"
            if kind == "dead":
                s = socket.socket()
                s.bind((host, 0))  # bound, never listening: the kernel refuses connections
                refusing.append(s)
                out.setdefault(kind, []).append((host, s.getsockname()[1]))
                continue
            handler = KINDS[kind]

            async def on_client(
                r: asyncio.StreamReader, w: asyncio.StreamWriter, handler: object = handler
            ) -> None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await handler(r, w, tls)  # type: ignore[operator]
                with contextlib.suppress(Exception):
                    w.close()

            server = await asyncio.start_server(on_client, host, 0, backlog=512)
            servers.append(server)
            out.setdefault(kind, []).append((host, server.sockets[0].getsockname()[1]))
    print(json.dumps(out), flush=True)
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: closed.set() if not sys.stdin.read(1) else None)
    await closed.wait()
    for server in servers:
        server.close()
    for s in refusing:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
