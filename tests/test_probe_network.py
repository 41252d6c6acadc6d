"""Resolution and connection failures against real peers: dnsmasq, and a network namespace."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from exporter.model import Reason, Stage, Target
from exporter.probe import _connect_failure, probe
from exporter.resolve import DnsResolver
from tests.conftest import need
from tests.fixtures.dns import DnsServer


async def test_name_resolves_through_the_configured_server(dns_server: DnsServer) -> None:
    resolver = DnsResolver(dns_server.nameservers, timeout=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = await probe(Target.create(f"mail.{dns_server.zone}", port), resolver=resolver)
    # resolved to 127.0.0.1, then refused: resolution worked
    assert result.peer_address == "127.0.0.1" and result.address_family == "ipv4"
    assert result.failure is not None and result.failure.stage is Stage.CONNECT
    assert result.phases.resolve is not None


@pytest.mark.parametrize("name", ["nosuchhost", "txtonly"])
async def test_name_not_resolved(dns_server: DnsServer, name: str) -> None:
    resolver = DnsResolver(dns_server.nameservers, timeout=2)
    result = await probe(Target.create(f"{name}.{dns_server.zone}", 25), resolver=resolver)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == (
        Stage.RESOLVE,
        Reason.NAME_NOT_RESOLVED,
    )


async def test_silent_name_server_is_a_resolve_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives queries, never answers
        resolver = DnsResolver([silent.getsockname()], timeout=0.3)
        result = await probe(Target.create("mail.probe.test", 25, timeout=3), resolver=resolver)
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == (Stage.RESOLVE, Reason.TIMEOUT)


def test_unreachable_network() -> None:
    """In a fresh network namespace even loopback is down: connect() says ENETUNREACH."""
    unshare = shutil.which("unshare")
    need(unshare is not None and os.geteuid() == 0, "needs root and unshare(1)")
    assert unshare is not None
    proc = subprocess.run(
        [unshare, "--net", sys.executable, "-m", "exporter", "probe", "127.0.0.1:25", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    need(proc.returncode != 0 or "Operation not permitted" not in proc.stderr, proc.stderr)
    out = json.loads(proc.stdout)
    assert (out["stage"], out["reason"]) == ("connect", "unreachable"), out
    assert proc.returncode == 1


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Reason.CONNECTION_REFUSED),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.UNREACHABLE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Reason.UNREACHABLE),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), Reason.TIMEOUT),
        (ConnectionResetError(errno.ECONNRESET, "reset"), Reason.CONNECTION_ERROR),
        (OSError(errno.EACCES, "Permission denied"), Reason.CONNECTION_ERROR),
    ],
)
def test_connect_errors_map_to_reasons(exc: OSError, reason: Reason) -> None:
    """The kernel's answers no loopback peer gives on demand (a host route gone, a reset SYN)."""
    assert _connect_failure(exc, "192.0.2.1", 25).reason is reason
