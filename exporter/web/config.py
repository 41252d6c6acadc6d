"""`--web.config.file` in the exporter-toolkit format: read, checked, and turned into a WebConfig.

The format is the one Prometheus operators already write for blackbox_exporter and node_exporter
(prometheus/exporter-toolkit docs/web-configuration.md), so the same file works here. What this
exporter cannot honour is refused with a message naming the key, never silently ignored: a
security setting that is quietly dropped is worse than an error at startup. docs/security.md lists
every key and what it does here.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exporter.config import _show, _StrictLoader, _yaml_problem, parse_duration, read_text

# exporter-toolkit's names (Go's tls.ClientAuthType) -> what Python's ssl module does for them.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go accepts a client certificate without verifying it for these. OpenSSL, through Python's ssl
# module, cannot ask for a certificate without verifying it, and exporter-toolkit's own docs call
# them insecure: refused, with the reason.
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# The response headers exporter-toolkit allows, with the values it allows (None: any string).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
# A bcrypt hash: $2a$, $2b$ or $2y$ (htpasswd -B writes $2y$), a cost of 04 to 31, 53 characters
# of salt and digest.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")

MAX_PEM_FILE = 16 * 1024 * 1024  # bytes read of a certificate, key or CA file at most

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = (
    *("cert_file", "key_file", "client_auth_type", "client_ca_file", "client_ca"),
    *("client_allowed_sans", "min_version", "max_version", "prefer_server_cipher_suites"),
)
# exporter-toolkit keys this exporter does not implement, and what to do instead.
_UNSUPPORTED = {
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.cipher_suites": (
        "not supported (Go cipher suite names); the exporter uses OpenSSL's defaults, "
        "and with min_version TLS13 only TLS 1.3 suites"
    ),
    "tls_server_config.curve_preferences": "not supported; the exporter uses OpenSSL's defaults",
}
_HTTP_KEYS = ("http2", "headers")
_RATE_KEYS = ("interval", "burst")


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_ca: str | None = None  # inline PEM
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    prefer_server_cipher_suites: bool = True

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)


@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds between two requests, on average
    burst: int  # requests allowed at once


@dataclass(frozen=True)
class WebConfig:
    """What the HTTP server enforces. The default (no file) is plain HTTP, open to anyone."""

    tls: TlsServerConfig | None = None
    users: tuple[tuple[str, bytes], ...] = ()  # user name -> bcrypt hash, sorted by name
    headers: tuple[tuple[str, str], ...] = ()
    http2: bool = True  # accepted for compatibility; the server speaks HTTP/1.1 only
    rate_limit: RateLimit | None = None
    source: str = "<none>"
    files: tuple[str, ...] = field(default=(), compare=False)  # every file it was read from


class WebConfigError(Exception):
    """An invalid web config: one line per problem, each naming its key."""

    def __init__(self, problems: list[str], source: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.source = source


def load_web_config(path: str) -> WebConfig:
    """Read and check the web config at `path`; relative file names are relative to it."""
    try:
        text = read_text(path)
    except ValueError as exc:
        raise WebConfigError([str(exc)], path) from exc
    config = parse_web_config(text, path, base_dir=os.path.dirname(os.path.abspath(path)))
    # The file itself is watched too, to pick up a change of users or headers.
    return WebConfig(**{**config.__dict__, "files": (path, *config.files)})


def parse_web_config(text: str, source: str = "<string>", *, base_dir: str = ".") -> WebConfig:
    """Check the text of a web config; the TLS files are loaded, so a bad key fails here."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise WebConfigError([_yaml_problem(exc)], source) from exc
    r = _Reader(base_dir)
    config = r.config(data, source)
    if r.problems or config is None:
        raise WebConfigError(r.problems or ["invalid web config"], source)
    if config.tls is not None:
        problems = _check_tls_files(config.tls)
        if not problems:
            try:
                server_context(config.tls)
            except (OSError, ssl.SSLError, ValueError) as exc:
                problems = [f"tls_server_config: {_tls_problem(exc)}"]
        if problems:
            raise WebConfigError(problems, source)
    return config


def _check_tls_files(tls: TlsServerConfig) -> list[str]:
    """Each TLS file readable and holding what its key says, each problem naming its key."""
    problems = []
    for key, path, loader in (
        ("cert_file", tls.cert_file, x509.load_pem_x509_certificates),
        ("key_file", tls.key_file, _load_key),
        ("client_ca_file", tls.client_ca_file, x509.load_pem_x509_certificates),
    ):
        if path is None:
            continue
        where = f"tls_server_config.{key}"
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # /dev/zero, a FIFO: read for ever
                problems.append(f"{where}: {path} is not a regular file")
                continue
            with open(path, "rb") as fh:
                data = fh.read(MAX_PEM_FILE + 1)
        except OSError as exc:
            problems.append(f"{where}: cannot read {path}: {exc.strerror}")
            continue
        try:
            loader(data)
        except (ValueError, TypeError):
            what = "private key" if key == "key_file" else "certificate"
            problems.append(f"{where}: {path} holds no PEM {what}")
    return problems


def _load_key(data: bytes) -> object:
    return serialization.load_pem_private_key(data, password=None)


def describe_web_config(config: WebConfig) -> str:
    """One line for `--config.check` and the log: what the web config enforces."""
    parts = []
    if config.tls is None:
        parts.append("plain HTTP")
    else:
        version = {v: k for k, v in TLS_VERSIONS.items()}[config.tls.min_version]
        parts.append(f"TLS from {version}")
        if config.tls.client_auth_type != "NoClientCert":
            parts.append(f"client certificates: {config.tls.client_auth_type}")
    parts.append(f"{len(config.users)} basic auth users" if config.users else "no basic auth")
    if config.headers:
        parts.append(f"{len(config.headers)} response headers")
    if config.rate_limit is not None:
        parts.append(
            f"rate limit 1 per {config.rate_limit.interval:g}s, burst {config.rate_limit.burst}"
        )
    return ", ".join(parts)


def server_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """The server-side TLS context for `tls`. Raises OSError or ssl.SSLError on a bad file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    if tls.client_ca_file or tls.client_ca:
        ctx.load_verify_locations(cafile=tls.client_ca_file, cadata=tls.client_ca)
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # HTTP/1.1 only (http_server_config.http2 is accepted and has no effect): say so in ALPN, so
    # a client offering h2 and http/1.1 picks the one this server speaks.
    ctx.set_alpn_protocols(["http/1.1"])
    # No TLS compression, no renegotiation by the client.
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def _tls_problem(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason == "KEY_VALUES_MISMATCH":
        return "key_file does not belong to cert_file"
    return f"cannot load the certificate, key or CA: {reason or exc}"


class _Reader:
    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, data: object, path: str, keys: tuple[str, ...] | None) -> dict[Any, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            if path:
                self.add(path, f"expected a mapping, got {_show(data)}")
            else:
                self.problems.append(f"the web config must be a mapping, got {_show(data)}")
            return {}
        for key in data:
            where = f"{path}.{key}" if path else str(key)
            if where in _UNSUPPORTED:
                self.add(where, _UNSUPPORTED[where])
            elif keys is not None and key not in keys:
                self.add(where, "unknown key")
        return data

    def config(self, data: object, source: str) -> WebConfig | None:
        if data is None:  # an empty file: exporter-toolkit's defaults, plain HTTP
            return WebConfig(source=source)
        if not isinstance(data, dict):
            self.mapping(data, "", _TOP_KEYS)
            return None
        top = self.mapping(data, "", _TOP_KEYS)
        tls = self.tls(top.get("tls_server_config"))
        http = self.mapping(top.get("http_server_config"), "http_server_config", _HTTP_KEYS)
        http2 = True
        if "http2" in http:
            if isinstance(http["http2"], bool):
                http2 = http["http2"]
            else:
                self.add("http_server_config.http2", f"{_show(http['http2'])} is not true or false")
        headers = self.headers(http.get("headers"))
        users = self.users(top.get("basic_auth_users"))
        rate = self.rate_limit(top.get("rate_limit"))
        files = tls.files() if tls is not None else ()
        return WebConfig(tls, users, headers, http2, rate, source, files)

    def tls(self, data: object) -> TlsServerConfig | None:
        path = "tls_server_config"
        m = self.mapping(data, path, _TLS_KEYS)
        # As in exporter-toolkit: a section without certificate, key or client CA is no TLS.
        if not any(m.get(k) for k in ("cert_file", "key_file", "client_ca_file", "client_ca")):
            return None
        bad = len(self.problems)
        cert = self.file(m.get("cert_file"), f"{path}.cert_file")
        key = self.file(m.get("key_file"), f"{path}.key_file")
        ca_file = None
        if m.get("client_ca_file") is not None:
            ca_file = self.file(m["client_ca_file"], f"{path}.client_ca_file")
        ca = m.get("client_ca")
        if ca is not None and not (isinstance(ca, str) and "-----BEGIN CERTIFICATE-----" in ca):
            self.add(f"{path}.client_ca", "expected PEM certificates as a string")
        if ca_file and ca:
            self.add(f"{path}.client_ca", "give client_ca or client_ca_file, not both")
        auth = m.get("client_auth_type", "NoClientCert")
        if auth in UNVERIFIED_CLIENT_AUTH:
            self.add(
                f"{path}.client_auth_type",
                f"{auth} accepts client certificates without verifying them and is not "
                "supported; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) "
                "with client_ca_file",
            )
        elif auth not in CLIENT_AUTH:
            choices = ", ".join([*CLIENT_AUTH, *UNVERIFIED_CLIENT_AUTH])
            self.add(f"{path}.client_auth_type", f"{_show(auth)} is not one of {choices}")
        elif auth != "NoClientCert" and not (ca_file or ca):
            self.add(f"{path}.client_ca_file", f"missing: client_auth_type {auth} needs it")
        sans = self.strings(m.get("client_allowed_sans"), f"{path}.client_allowed_sans")
        if sans and auth != "RequireAndVerifyClientCert":
            self.add(
                f"{path}.client_allowed_sans",
                "needs client_auth_type RequireAndVerifyClientCert",
            )
        low = self.version(m.get("min_version", "TLS12"), f"{path}.min_version")
        high = self.version(m.get("max_version", "TLS13"), f"{path}.max_version")
        if low is not None and high is not None and low > high:
            self.add(f"{path}.min_version", "is above max_version")
        prefer = m.get("prefer_server_cipher_suites", True)
        if not isinstance(prefer, bool):
            self.add(f"{path}.prefer_server_cipher_suites", f"{_show(prefer)} is not true or false")
        if len(self.problems) > bad or cert is None or key is None:
            return None
        assert low is not None and high is not None
        return TlsServerConfig(cert, key, auth, ca_file, ca, tuple(sans), low, high, bool(prefer))

    def file(self, value: object, path: str) -> str | None:
        if value is None or value == "":
            self.add(path, "missing")
            return None
        if not isinstance(value, str):
            self.add(path, f"{_show(value)} is not a file path")
            return None
        return os.path.join(self.base_dir, value)

    def version(self, value: object, path: str) -> ssl.TLSVersion | None:
        if isinstance(value, str) and value in TLS_VERSIONS:
            return TLS_VERSIONS[value]
        self.add(path, f"{_show(value)} is not one of {', '.join(TLS_VERSIONS)}")
        return None

    def strings(self, value: object, path: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.add(path, "expected a list of strings")
            return []
        return value

    def headers(self, data: object) -> tuple[tuple[str, str], ...]:
        path = "http_server_config.headers"
        m = self.mapping(data, path, tuple(HEADERS))
        out = []
        for name, allowed in HEADERS.items():
            value = m.get(name)
            if value is None or value == "":  # exporter-toolkit: blank means unset
                continue
            if not isinstance(value, str) or not value.isprintable():
                self.add(f"{path}.{name}", f"{_show(value)} is not a header value")
            elif allowed is not None and value.lower() not in allowed:
                self.add(f"{path}.{name}", f"{_show(value)} is not one of {', '.join(allowed)}")
            else:
                out.append((name, value))
        return tuple(out)

    def users(self, data: object) -> tuple[tuple[str, bytes], ...]:
        m = self.mapping(data, "basic_auth_users", None)
        out = []
        for name, hashed in m.items():
            path = f"basic_auth_users.{name}"
            if not isinstance(name, str) or not name or ":" in name or not name.isprintable():
                self.add(path, "a user name is a non-empty printable string without ':'")
            elif not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
                # Never echo the value: it may be a password written where its hash belongs.
                self.add(path, "not a bcrypt hash ($2b$, $2y$ or $2a$, as htpasswd -B writes)")
            else:
                out.append((name, hashed.encode("ascii")))
        return tuple(sorted(out))

    def rate_limit(self, data: object) -> RateLimit | None:
        path = "rate_limit"
        m = self.mapping(data, path, _RATE_KEYS)
        if not m:
            return None
        interval = 0.0
        if "interval" in m:
            try:
                interval = parse_duration(m["interval"])
            except ValueError:
                self.add(f"{path}.interval", f"{_show(m['interval'])} is not a duration")
        burst = m.get("burst", 0)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
            self.add(f"{path}.burst", f"{_show(burst)} is not a non-negative integer")
            return None
        if interval == 0:  # exporter-toolkit: an interval of 0 disables the limiter
            return None
        if burst == 0:
            self.add(f"{path}.burst", "0 would refuse every request; give at least 1")
            return None
        return RateLimit(interval, burst)
