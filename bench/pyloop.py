"""Reference client: sequential STARTTLS probes with a blocking socket and OpenSSL's verification.

What Python can do at best for one STARTTLS dialogue (greeting, EHLO, STARTTLS, handshake with
chain and name verification in C, EHLO, QUIT), with no event loop and no result to build. The bench
runs it as a child process and reads its CPU time; it prints the number of completed dialogues.

    python bench/pyloop.py HOST PORT SERVER_NAME CA_FILE SECONDS
"""

from __future__ import annotations

import socket
import ssl
import sys
import time


def _reply(f: socket.SocketIO | object) -> bytes:
    lines = []
    while True:
        line = f.readline(4096)  # type: ignore[attr-defined]
        if not line:
            raise ConnectionError("closed")
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def dialogue(host: str, port: int, ctx: ssl.SSLContext, name: str) -> None:
    with socket.create_connection((host, port), timeout=10) as raw:
        f = raw.makefile("rb")
        _reply(f)
        raw.sendall(b"EHLO bench.example\r\n")
        _reply(f)
        raw.sendall(b"STARTTLS\r\n")
        if not _reply(f).startswith(b"220"):
            raise RuntimeError("STARTTLS refused")
        f.close()
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            t = tls.makefile("rb")
            tls.sendall(b"EHLO bench.example\r\n")
            _reply(t)
            tls.sendall(b"QUIT\r\n")
            _reply(t)
            t.close()


def main() -> int:
    host, port, name, ca_file, seconds = sys.argv[1:6]
    ctx = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + float(seconds)
    done = 0
    while time.monotonic() < deadline:
        dialogue(host, int(port), ctx, name)
        done += 1
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
