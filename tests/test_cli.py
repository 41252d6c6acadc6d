"""The one-shot `probe` command: report, JSON, exit codes, usage errors."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys

import pytest

from tests.scripted import serve, smtp_session

JSON_KEYS = {
    "success",
    "stage",
    "reason",
    "tls_version",
    "starttls_advertised",
    "cert_days_until_expiry",
    "cert_trusted",
    "cert_hostname_match",
    "phases",
}


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "probe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_json_report_of_a_good_server(server_tls: ssl.SSLContext, ca_file: str) -> None:
    async with serve(lambda r, w: smtp_session(r, w, server_tls)) as (host, port):
        code, out, _ = await cli(
            f"{host}:{port}", "--ca-file", ca_file, "--ehlo-name", "cli.test", "--json"
        )
    data = json.loads(out)
    assert code == 0
    assert data.keys() >= JSON_KEYS
    assert data["success"] is True and data["stage"] is None and data["reason"] is None
    assert data["starttls_advertised"] is True
    assert data["tls_version"] in ("TLS 1.2", "TLS 1.3")
    assert data["cert_trusted"] is True and data["cert_hostname_match"] is True
    assert data["cert_days_until_expiry"] > 300_000  # trustme certificates last until 3000
    assert set(data["phases"]) == {
        "resolve",
        "connect",
        "greeting",
        "ehlo",
        "starttls",
        "tls_handshake",
        "total",
    }
    assert next(e["text"] for e in data["transcript"] if e["kind"] == "C") == "EHLO cli.test"


async def test_text_report_of_a_failure_exits_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code, out, _ = await cli(f"127.0.0.1:{port}", "--timeout", "3")
    assert code == 1
    assert out.startswith(f"FAILED  127.0.0.1:{port}")
    assert "stage:  connect" in out and "reason: connection_refused" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mail.test:70000"], "is not a port"),
        (["127.0.0.1:25", "--mode", "tls"], "invalid choice"),
        (["127.0.0.1:25", "--ca-file", "/nonexistent/ca.pem"], "No such file"),
        (["127.0.0.1:25", "--timeout", "0"], "--timeout must be positive"),
        ([], "the following arguments are required"),
    ],
)
async def test_bad_usage_exits_2(args: list[str], message: str) -> None:
    code, out, err = await cli(*args)
    assert code == 2
    assert message in err
    assert out == ""


async def test_checks_on_the_command_line(server_tls: ssl.SSLContext, ca_file: str) -> None:
    from tests.test_checks_scripted import Server

    vulnerable = Server(server_tls, keep_pending=True)
    async with serve(vulnerable) as (host, port):
        args = (f"{host}:{port}", "--ca-file", ca_file, "--check", "starttls_injection")
        code, out, _ = await cli(*args, "--check", "submission_requires_tls", "--all-addresses")
        json_code, json_out, _ = await cli(*args, "--json")
    assert code == 0, out
    assert f"  {host:<40}OK  TLS 1." in out  # the address table of --all-addresses
    assert f"Checks\n  at {host}\n  starttls_injection: VULNERABLE" in out
    assert "  submission_requires_tls: NO: mail or AUTH accepted before STARTTLS" in out
    data = json.loads(json_out)
    assert json_code == 0 and data["addresses"] == []
    [injection] = data["checks"]
    assert (injection["check"], injection["verdict"], injection["address"]) == (
        "starttls_injection",
        True,
        host,
    )
