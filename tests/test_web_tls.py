"""The locked-down web endpoint, tried with real TLS clients: curl and Python's ssl/http.client.

The server is the exporter's own HTTP server (a real socket on 127.0.0.1, its own thread) behind
a WebGuard loaded from a web config file, as `--web.config.file` sets it up.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.service.http import HttpServer
from exporter.service.main import Service
from exporter.web.config import load_web_config
from exporter.web.guard import WebGuard
from tests.conftest import need

PASSWORD = "correct horse"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
HEADERS = {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class Pki:
    dir: Path
    server_ca: Path  # what clients trust
    client_ca: Path  # what the server trusts for client certificates
    client: tuple[Path, Path]  # cert, key: issued by client_ca, SAN client.test
    other_client: tuple[Path, Path]  # issued by client_ca, SAN other.test
    rogue_client: tuple[Path, Path]  # issued by an unknown CA


def _write(leaf: trustme.LeafCert, d: Path, stem: str) -> tuple[Path, Path]:
    cert, key = d / f"{stem}.crt", d / f"{stem}.key"
    for pem in leaf.cert_chain_pems:
        with cert.open("ab") as fh:
            fh.write(pem.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("web-tls")
    server_ca, client_ca, rogue_ca = trustme.CA(), trustme.CA(), trustme.CA()
    _write(server_ca.issue_cert("localhost", "127.0.0.1"), d, "server")
    _write(server_ca.issue_cert("localhost", "127.0.0.1"), d, "server2")
    server_ca.cert_pem.write_to_path(str(d / "server-ca.pem"))
    client_ca.cert_pem.write_to_path(str(d / "client-ca.pem"))
    return Pki(
        d,
        d / "server-ca.pem",
        d / "client-ca.pem",
        _write(client_ca.issue_cert("client.test"), d, "client"),
        _write(client_ca.issue_cert("other.test"), d, "other"),
        _write(rogue_ca.issue_cert("client.test"), d, "rogue"),
    )


@dataclass
class Endpoint:
    port: int
    guard: WebGuard
    web_config: Path


Serve = Callable[[str], Endpoint]


@pytest.fixture
def serve(pki: Pki, tmp_path: Path) -> Iterator[Serve]:
    servers: list[HttpServer] = []

    def start(web_yaml: str) -> Endpoint:
        path = tmp_path / "web.yml"
        path.write_text(web_yaml.replace("PKI", str(pki.dir)))
        guard = WebGuard(load_web_config(str(path)), str(path))
        service = Service(parse_config("targets: []\n"), "config.yml")
        server = HttpServer("127.0.0.1", 0, service, guard)
        server.start()
        servers.append(server)
        return Endpoint(server.address[1], guard, path)

    yield start
    for server in servers:
        server.stop()


TLS = "tls_server_config: {cert_file: PKI/server.crt, key_file: PKI/server.key}\n"
AUTH = f"basic_auth_users: {{prometheus: '{HASH}'}}\n"
HEADER_CONFIG = (
    "http_server_config: {headers: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}}\n"
)


def client_context(
    pki: Pki, cert: tuple[Path, Path] | None = None, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def get(
    port: int,
    ctx: ssl.SSLContext | None,
    path: str = "/metrics",
    user: str | None = None,
    password: str = PASSWORD,
) -> http.client.HTTPResponse:
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    headers = {}
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    return resp


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    need(shutil.which("curl") is not None, "curl is not installed (apt-get install curl)")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- basic auth ------------------------------------------------------------------------------


def test_basic_auth_over_tls_with_python(pki: Pki, serve: Serve) -> None:
    ep = serve(TLS + AUTH + HEADER_CONFIG)
    ctx = client_context(pki)
    ok = get(ep.port, ctx, user="prometheus")
    assert ok.status == 200
    for name, value in HEADERS.items():
        assert ok.getheader(name) == value
    for user, password in (("prometheus", "wrong"), ("nobody", PASSWORD), ("prometheus", "")):
        refused = get(ep.port, ctx, user=user, password=password)
        assert refused.status == 401, (user, password)
        assert refused.getheader("WWW-Authenticate", "").startswith("Basic realm=")
        assert refused.getheader("X-Frame-Options") == "deny"  # on refusals too
    missing = get(ep.port, ctx)
    assert missing.status == 401
    # every path, health included, as exporter-toolkit does
    assert get(ep.port, ctx, "/-/healthy").status == 401
    assert get(ep.port, ctx, "/-/healthy", user="prometheus").status == 200


def test_basic_auth_with_curl(pki: Pki, serve: Serve) -> None:
    ep = serve(TLS + AUTH)
    url = f"https://127.0.0.1:{ep.port}/metrics"
    ok = curl("--cacert", str(pki.server_ca), "-u", f"prometheus:{PASSWORD}", url)
    assert ok.returncode == 0, ok.stderr
    body, _, status = ok.stdout.rpartition("\n")
    assert status == "200"
    names = {f.name for f in text_string_to_metric_families(body)}
    assert "smtp_tls_exporter_build_info" in names
    wrong = curl("--cacert", str(pki.server_ca), "-u", "prometheus:nope", "-i", url)
    assert wrong.stdout.endswith("\n401")
    assert 'www-authenticate: basic realm="smtp-tls-exporter"' in wrong.stdout.lower()
    # Not trusting the server's CA: curl refuses, nothing is sent.
    untrusted = curl("-u", f"prometheus:{PASSWORD}", url)
    assert untrusted.returncode == 60, untrusted


def test_basic_auth_without_tls(pki: Pki, serve: Serve) -> None:
    ep = serve(AUTH)
    assert get(ep.port, None).status == 401
    assert get(ep.port, None, user="prometheus").status == 200


# -- TLS -------------------------------------------------------------------------------------


def test_plain_http_to_the_tls_port_gets_a_clear_400(pki: Pki, serve: Serve) -> None:
    ep = serve(TLS)
    resp = curl(f"http://127.0.0.1:{ep.port}/metrics")
    assert resp.stdout == "Client sent an HTTP request to an HTTPS server.\n\n400", resp
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=10)
    conn.request("GET", "/metrics")
    answer = conn.getresponse()
    assert answer.status == 400
    assert b"HTTPS server" in answer.read()
    conn.close()
    # and the TLS port still serves TLS afterwards
    assert get(ep.port, client_context(pki)).status == 200


def test_min_version_is_enforced(pki: Pki, serve: Serve) -> None:
    ep = serve(TLS.replace("}", ", min_version: TLS13}"))
    with pytest.raises(ssl.SSLError):
        get(ep.port, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    assert get(ep.port, client_context(pki)).status == 200
    old = curl("--cacert", str(pki.server_ca), "--tls-max", "1.2", f"https://127.0.0.1:{ep.port}/")
    assert old.returncode == 35, old  # CURLE_SSL_CONNECT_ERROR
    new = curl(
        "--cacert", str(pki.server_ca), "--tlsv1.3", f"https://127.0.0.1:{ep.port}/-/healthy"
    )
    assert new.stdout == "Healthy.\n\n200"


def test_tls12_is_the_default_minimum(pki: Pki, serve: Serve) -> None:
    ep = serve(TLS)
    context = ep.guard.current().context
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert get(ep.port, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)).status == 200


MTLS = (
    "tls_server_config: {cert_file: PKI/server.crt, key_file: PKI/server.key, "
    "client_ca_file: PKI/client-ca.pem, client_auth_type: AUTH_TYPE}\n"
)


def refused_tls(port: int, ctx: ssl.SSLContext) -> bool:
    """True if the server ends the connection over the client certificate (TLS 1.3 reports it
    at the first read after the handshake, TLS 1.2 in the handshake)."""
    try:
        resp = get(port, ctx)
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return True
    return resp.status != 200


def test_require_and_verify_client_cert(pki: Pki, serve: Serve) -> None:
    ep = serve(MTLS.replace("AUTH_TYPE", "RequireAndVerifyClientCert"))
    assert get(ep.port, client_context(pki, pki.client)).status == 200
    assert refused_tls(ep.port, client_context(pki))  # no certificate
    assert refused_tls(ep.port, client_context(pki, pki.rogue_client))  # unknown issuer
    url = f"https://127.0.0.1:{ep.port}/metrics"
    missing = curl("--cacert", str(pki.server_ca), url)
    # refused in or right after the handshake: curl says 35, 55 or 56 depending on the moment
    assert missing.returncode != 0 and missing.stdout.endswith("000"), missing
    cert, key = pki.client
    good = curl("--cacert", str(pki.server_ca), "--cert", str(cert), "--key", str(key), url)
    assert good.returncode == 0 and good.stdout.endswith("\n200"), good


def test_verify_client_cert_if_given(pki: Pki, serve: Serve) -> None:
    ep = serve(MTLS.replace("AUTH_TYPE", "VerifyClientCertIfGiven"))
    assert get(ep.port, client_context(pki)).status == 200
    assert get(ep.port, client_context(pki, pki.client)).status == 200
    assert refused_tls(ep.port, client_context(pki, pki.rogue_client))


def test_client_allowed_sans(pki: Pki, serve: Serve) -> None:
    config = MTLS.replace("AUTH_TYPE", "RequireAndVerifyClientCert").replace(
        "}", ", client_allowed_sans: [client.test]}"
    )
    ep = serve(config)
    assert get(ep.port, client_context(pki, pki.client)).status == 200
    assert refused_tls(ep.port, client_context(pki, pki.other_client))


def served_serial(port: int, pki: Pki) -> int:
    ctx = client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_rotated_certificate_is_served_to_new_connections(pki: Pki, serve: Serve) -> None:
    d = pki.dir / "rotate"
    d.mkdir(exist_ok=True)
    for name in ("server.crt", "server.key"):
        shutil.copy(pki.dir / name, d / name)
    ep = serve(TLS.replace("PKI/", "PKI/rotate/"))
    first = served_serial(ep.port, pki)
    # as cert-manager or certbot do: new files renamed into place
    for name in ("server.crt", "server.key"):
        shutil.copy(pki.dir / name.replace("server", "server2"), d / f"{name}.new")
        (d / f"{name}.new").rename(d / name)
    second = served_serial(ep.port, pki)
    assert second != first
    assert ep.guard.reload_success


def test_a_broken_web_config_keeps_the_previous_one(pki: Pki, serve: Serve) -> None:
    ep = serve(TLS + AUTH)
    ctx = client_context(pki)
    assert get(ep.port, ctx, user="prometheus").status == 200
    ep.web_config.write_text(TLS.replace("PKI", str(pki.dir)) + "basic_auth_users: {x: plain}\n")
    # still TLS, still the old user and password, and the failure is visible
    assert get(ep.port, ctx, user="prometheus").status == 200
    assert get(ep.port, ctx).status == 401
    assert not ep.guard.reload_success
    ep.web_config.write_text(TLS.replace("PKI", str(pki.dir)))  # fixed: no more basic auth
    assert get(ep.port, ctx).status == 200
    assert ep.guard.reload_success


def test_rate_limit(pki: Pki, serve: Serve) -> None:
    ep = serve("rate_limit: {interval: 1h, burst: 2}\n")
    statuses = [get(ep.port, None, "/-/healthy").status for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_the_exporter_serves_tls_and_basic_auth_from_its_flag(pki: Pki, tmp_path: Path) -> None:
    from tests.test_service_e2e import exporter_process

    config = tmp_path / "config.yml"
    config.write_text("targets: []\n")
    web = tmp_path / "web.yml"
    web.write_text((TLS + AUTH + HEADER_CONFIG).replace("PKI", str(pki.dir)))
    with exporter_process(config, f"--web.config.file={web}") as exp:
        exp.wait_line(lambda s: "web config in force" in s, 5, "the web config line")
        port = int(exp.url.rsplit(":", 1)[1])
        resp = get(port, client_context(pki), user="prometheus")
        assert resp.status == 200 and resp.getheader("X-Content-Type-Options") == "nosniff"
        assert get(port, client_context(pki)).status == 401
        line = exp.wait_line(lambda s: "web config in force" in s, 1, "the web config line")
        assert "TLS from TLS12, 1 basic auth users, 2 response headers" in line
        assert exp.stop() == 0
