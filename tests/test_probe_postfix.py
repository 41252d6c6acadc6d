"""The `probe` command against a real Postfix: every listener gives the verdict it should."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.fixtures.postfix import Listener, PostfixServer

pytestmark = pytest.mark.postfix


def probe_cli(listener: Listener, *extra: str, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    args = [
        sys.executable,
        "-m",
        "exporter",
        "probe",
        f"{listener.host}:{listener.port}",
        "--ca-file",
        listener.ca_file,
        "--server-name",
        listener.server_name,
        "--ehlo-name",
        "prober.example.test",
        "--timeout",
        str(timeout),
        "--json",
        *extra,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 30)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def days_left(listener: Listener) -> float:
    return (listener.leaf_not_after - time.time()) / 86400


@pytest.mark.parametrize("name", ["smtps_465", "submission_587", "relay_25", "relay_2525"])
def test_good_listeners_succeed(postfix: PostfixServer, name: str) -> None:
    listener = postfix.listener(name)
    code, out = probe_cli(listener)
    assert code == 0, out
    assert out["success"] is True
    assert out["mode"] == listener.mode
    assert out["tls_version"] == "TLS 1.3"
    assert out["tls_cipher"]
    assert out["cert_trusted"] is True and out["cert_hostname_match"] is True
    assert out["cert_days_until_expiry"] == pytest.approx(days_left(listener), abs=0.01)
    assert len(out["chain"]) == 2  # leaf and intermediate
    phases = out["phases"]
    assert phases["total"] >= phases["tls_handshake"] > 0
    if listener.mode == "starttls":
        assert out["starttls_advertised"] is True
        assert phases["starttls"] > 0
    else:
        assert out["starttls_advertised"] is None and "starttls" not in phases


def test_465_text_report(postfix: PostfixServer) -> None:
    listener = postfix.listener("smtps_465")
    command = [sys.executable, "-m", "exporter", "probe", f"{listener.host}:465"]
    proc = subprocess.run(
        [*command, "--ca-file", listener.ca_file, "--ehlo-name", "prober.example.test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout
    report = proc.stdout
    assert report.startswith(f"OK  {listener.host}:465  (mode implicit_tls, verify required")
    for expected in ("tls_handshake", "version: TLS 1.3", "expires in:", "trusted:        yes"):
        assert expected in report
    assert "greeting:            220 mail.example.test" in report  # read inside TLS


def test_auth_offered_only_after_tls(postfix: PostfixServer) -> None:
    _, out = probe_cli(postfix.listener("submission_587"))
    assert out["auth_before_tls"] == []
    assert "AUTH" in out["extensions_after_tls"]
    assert "STARTTLS" not in out["extensions_after_tls"]  # RFC 3207: not offered again


def test_auth_offered_in_the_clear_is_reported(postfix: PostfixServer) -> None:
    code, out = probe_cli(postfix.listener("auth_in_clear"))
    assert code == 0
    assert "PLAIN" in out["auth_before_tls"]


def test_multiline_greeting_behind_postscreen(postfix: PostfixServer) -> None:
    code, out = probe_cli(postfix.listener("multiline_greeting"))
    assert code == 0, out
    greeting = next(e["text"] for e in out["transcript"] if e["kind"] == "S")
    assert greeting.startswith("220-") and "\n220 " in greeting


def test_tls12_only(postfix: PostfixServer) -> None:
    code, out = probe_cli(postfix.listener("tls12_only"))
    assert code == 0
    assert out["tls_version"] == "TLS 1.2"


def test_expiring_soon_is_success_with_days_left(postfix: PostfixServer) -> None:
    listener = postfix.listener("expiring_soon")
    code, out = probe_cli(listener)
    assert code == 0
    assert 4.9 < out["cert_days_until_expiry"] < 5.01


def test_no_starttls(postfix: PostfixServer) -> None:
    code, out = probe_cli(postfix.listener("no_starttls"))
    assert code == 1
    assert (out["stage"], out["reason"]) == ("starttls", "starttls_not_advertised")
    assert out["starttls_advertised"] is False
    assert out["tls_version"] is None


@pytest.mark.parametrize(
    ("name", "reason", "trusted", "match"),
    [
        ("expired", "expired", False, True),
        ("self_signed", "self_signed", False, True),
        ("wrong_name", "hostname_mismatch", True, False),
        ("no_intermediate", "incomplete_chain", False, True),
    ],
)
def test_bad_certificates(
    postfix: PostfixServer, name: str, reason: str, trusted: bool, match: bool
) -> None:
    listener = postfix.listener(name)
    # port 25 reports by default: the probe succeeds and says what is wrong
    code, out = probe_cli(listener)
    assert code == 0 and out["success"] is True
    assert (out["cert_trusted"], out["cert_hostname_match"]) == (trusted, match)
    assert out["cert_verify_reason"] == reason
    # where verification is required the probe fails, and the certificate's facts stay
    code, out = probe_cli(listener, "--verify", "required")
    assert code == 1
    assert (out["stage"], out["reason"]) == ("certificate", reason)
    assert out["certificate"]["not_after"] == pytest.approx(listener.leaf_not_after)
    assert out["cert_days_until_expiry"] == pytest.approx(days_left(listener), abs=0.01)


def test_starttls_port_probed_as_implicit_tls(postfix: PostfixServer) -> None:
    code, out = probe_cli(postfix.listener("relay_25"), "--mode", "implicit_tls")
    assert code == 1
    assert (out["stage"], out["reason"]) == ("tls_handshake", "plaintext_on_implicit_tls_port")
    assert "use mode starttls" in out["detail"]


def test_implicit_tls_port_probed_as_starttls(postfix: PostfixServer) -> None:
    code, out = probe_cli(postfix.listener("smtps_465"), "--mode", "starttls", timeout=1.5)
    assert code == 1
    assert (out["stage"], out["reason"]) == ("greeting", "timeout")
    assert "implicit_tls" in out["detail"]
