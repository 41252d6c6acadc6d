"""`--web.config.file`: the exporter-toolkit format, each invalid file with its exact error."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import trustme

from exporter.web.config import (
    RateLimit,
    WebConfigError,
    describe_web_config,
    load_web_config,
    parse_web_config,
)

# Cost 4, the lowest bcrypt allows: the tests check the format, not the work factor.
HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server.crt/server.key for localhost, ca.pem (the client CA), other.key (not the cert's)."""
    d = tmp_path_factory.mktemp("web-pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    leaf.private_key_pem.write_to_path(str(d / "server.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ca.issue_cert("other.test").private_key_pem.write_to_path(str(d / "other.key"))
    (d / "garbage.pem").write_text("not a certificate\n")
    return d


def parse(text: str, base: Path) -> list[str] | None:
    try:
        parse_web_config(text, "web.yml", base_dir=str(base))
    except WebConfigError as exc:
        return exc.problems
    return None


def test_an_empty_file_is_plain_http_without_auth(pki: Path) -> None:
    config = parse_web_config("", base_dir=str(pki))
    assert config.tls is None and config.users == () and config.headers == ()
    assert describe_web_config(config) == "plain HTTP, no basic auth"


def test_every_supported_key(pki: Path) -> None:
    text = f"""\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  client_allowed_sans: [client.test]
  min_version: TLS13
  max_version: TLS13
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    Content-Security-Policy: "default-src 'self'"
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    X-XSS-Protection: "1; mode=block"
    Strict-Transport-Security: max-age=31536000
    # exporter-toolkit: a blank value leaves the header unset
basic_auth_users:
  prometheus: "{HASH}"
  grafana: "{HASH.replace("$2b$", "$2y$")}"
rate_limit:
  interval: 100ms
  burst: 20
"""
    config = parse_web_config(text, base_dir=str(pki))
    assert config.tls is not None
    assert config.tls.cert_file == str(pki / "server.crt")
    assert config.tls.client_ca_file == str(pki / "ca.pem")
    assert config.tls.client_allowed_sans == ("client.test",)
    assert config.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert [u for u, _ in config.users] == ["grafana", "prometheus"]
    assert dict(config.headers)["X-Frame-Options"] == "deny"
    assert len(config.headers) == 5
    assert config.http2 is False
    assert config.rate_limit == RateLimit(0.1, 20)
    assert describe_web_config(config) == (
        "TLS from TLS13, client certificates: RequireAndVerifyClientCert, 2 basic auth users, "
        "5 response headers, rate limit 1 per 0.1s, burst 20"
    )


def test_a_zero_rate_limit_interval_disables_it(pki: Path) -> None:
    config = parse_web_config("rate_limit: {interval: 0s, burst: 5}\n", base_dir=str(pki))
    assert config.rate_limit is None


INVALID = [
    ("bogus: 1\n", ["bogus: unknown key"]),
    ("- a list\n", ["the web config must be a mapping, got a list"]),
    (
        "basic_auth_users: {a: 1\n",
        [
            "line 2, column 1: expected ',' or '}', but got '<stream end>' "
            "(while parsing a flow mapping)"
        ],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, cipher_suites: []}\n",
        [
            "tls_server_config.cipher_suites: not supported (Go cipher suite names); the "
            "exporter uses OpenSSL's defaults, and with min_version TLS13 only TLS 1.3 suites"
        ],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, curve_preferences: []}\n",
        [
            "tls_server_config.curve_preferences: not supported; "
            "the exporter uses OpenSSL's defaults"
        ],
    ),
    (
        "tls_server_config: {cert: x, key: y}\n",
        [
            "tls_server_config.cert: inline certificates are not supported; use cert_file",
            "tls_server_config.key: inline keys are not supported; use key_file",
        ],
    ),
    ("tls_server_config: {cert_file: server.crt}\n", ["tls_server_config.key_file: missing"]),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, "
        "client_auth_type: RequireAnyClientCert, client_ca_file: ca.pem}\n",
        [
            "tls_server_config.client_auth_type: RequireAnyClientCert accepts client "
            "certificates without verifying them and is not supported; use "
            "RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file"
        ],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, "
        "client_auth_type: Sometimes}\n",
        [
            'tls_server_config.client_auth_type: "Sometimes" is not one of NoClientCert, '
            "VerifyClientCertIfGiven, RequireAndVerifyClientCert, RequestClientCert, "
            "RequireAnyClientCert"
        ],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, "
        "client_auth_type: RequireAndVerifyClientCert}\n",
        [
            "tls_server_config.client_ca_file: missing: client_auth_type "
            "RequireAndVerifyClientCert needs it"
        ],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, "
        "client_allowed_sans: [a.test]}\n",
        [
            "tls_server_config.client_allowed_sans: "
            "needs client_auth_type RequireAndVerifyClientCert"
        ],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS1.2}\n",
        ['tls_server_config.min_version: "TLS1.2" is not one of TLS10, TLS11, TLS12, TLS13'],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: server.key, "
        "min_version: TLS13, max_version: TLS12}\n",
        ["tls_server_config.min_version: is above max_version"],
    ),
    (
        "tls_server_config: {cert_file: missing.crt, key_file: server.key}\n",
        ["tls_server_config.cert_file: cannot read {pki}/missing.crt: No such file or directory"],
    ),
    (
        "tls_server_config: {cert_file: server.crt, key_file: other.key}\n",
        ["tls_server_config: key_file does not belong to cert_file"],
    ),
    (
        "tls_server_config: {cert_file: garbage.pem, key_file: server.key}\n",
        ["tls_server_config.cert_file: {pki}/garbage.pem holds no PEM certificate"],
    ),
    (
        "http_server_config: {http2: maybe, headers: {X-Powered-By: me}}\n",
        [
            'http_server_config.http2: "maybe" is not true or false',
            "http_server_config.headers.X-Powered-By: unknown key",
        ],
    ),
    (
        "http_server_config: {headers: {X-Frame-Options: allow-from, X-Content-Type-Options: "
        "sniff}}\n",
        [
            'http_server_config.headers.X-Frame-Options: "allow-from" is not one of deny, '
            "sameorigin",
            'http_server_config.headers.X-Content-Type-Options: "sniff" is not one of nosniff',
        ],
    ),
    (
        "basic_auth_users: {prometheus: hunter2, 'a:b': x}\n",
        [
            "basic_auth_users.prometheus: not a bcrypt hash ($2b$, $2y$ or $2a$, as htpasswd "
            "-B writes)",
            "basic_auth_users.a:b: a user name is a non-empty printable string without ':'",
        ],
    ),
    (
        "rate_limit: {interval: soon, burst: -1, every: 1}\n",
        [
            "rate_limit.every: unknown key",
            'rate_limit.interval: "soon" is not a duration',
            "rate_limit.burst: -1 is not a non-negative integer",
        ],
    ),
    (
        "rate_limit: {interval: 1s, burst: 0}\n",
        ["rate_limit.burst: 0 would refuse every request; give at least 1"],
    ),
]


@pytest.mark.parametrize(("text", "problems"), INVALID)
def test_invalid_web_configs(pki: Path, text: str, problems: list[str]) -> None:
    got = parse(text, pki)
    assert got is not None, "accepted"
    assert got == [p.replace("{pki}", str(pki)) for p in problems]


def test_a_password_in_place_of_its_hash_is_not_echoed(pki: Path) -> None:
    got = parse("basic_auth_users: {prometheus: correct-horse-battery}\n", pki)
    assert got is not None and "correct-horse" not in "\n".join(got)


def test_relative_files_are_relative_to_the_web_config(pki: Path, tmp_path: Path) -> None:
    path = pki / "web.yml"
    path.write_text("tls_server_config: {cert_file: server.crt, key_file: server.key}\n")
    config = load_web_config(str(path))
    assert config.tls is not None and config.tls.key_file == str(pki / "server.key")
    assert config.files == (str(path), str(pki / "server.crt"), str(pki / "server.key"))
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(str(tmp_path / "absent.yml"))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_check_and_startup_refuse_a_bad_web_config(pki: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("targets: []\n")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {prometheus: hunter2}\nhttp_server_config: {http3: true}\n")
    expected = [
        f"{web}: invalid web config (2 problems):",
        "  http_server_config.http3: unknown key",
        "  basic_auth_users.prometheus: not a bcrypt hash ($2b$, $2y$ or $2a$, as htpasswd -B "
        "writes)",
    ]
    check = run(f"--config.file={config}", f"--web.config.file={web}", "--config.check", cwd=pki)
    assert check.returncode == 1
    assert check.stdout == f"{config}: OK (0 targets)\n"
    assert check.stderr.splitlines() == expected
    start = run(
        f"--config.file={config}",
        f"--web.config.file={web}",
        "--web.listen-address=127.0.0.1:0",
        cwd=pki,
    )
    assert start.returncode == 1
    assert start.stderr.splitlines() == expected

    web.write_text(f"basic_auth_users: {{prometheus: '{HASH}'}}\n")
    check = run(f"--config.file={config}", f"--web.config.file={web}", "--config.check", cwd=pki)
    assert (check.returncode, check.stderr) == (0, "")
    assert check.stdout.splitlines()[1] == f"{web}: OK (plain HTTP, 1 basic auth users)"
