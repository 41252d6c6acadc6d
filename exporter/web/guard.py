"""The web config in force: re-read when its files change, enforced per connection and per request.

exporter-toolkit reads its web config on every request, so rotated certificates and changed users
apply at once. This does the same at the cost of a few stat() calls: on each new connection (for
TLS) and each request (for users, headers, rate limit) it compares the files' identity (inode,
size, modification time) with what it loaded, and loads them again when one changed. A changed
file that does not load (half written, a typo, a key that does not match) is refused: the
previous web config stays in force, the error is logged once, and
`smtp_tls_exporter_web_config_last_reload_successful` drops to 0, as with the main config.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import bcrypt

from exporter.web.config import WebConfig, WebConfigError, load_web_config, server_context

log = logging.getLogger(__name__)

# Seconds a client has to finish its TLS handshake (a connection that sends nothing holds a thread).
HANDSHAKE_TIMEOUT = 10.0
# What Go's net/http answers to plaintext on a TLS port; curl and browsers show it.
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
_TLS_HANDSHAKE_RECORD = 0x16

Signature = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class Active:
    """One loaded web config and its TLS context (None: plain HTTP)."""

    config: WebConfig
    context: ssl.SSLContext | None
    signature: Signature


def _signature(files: tuple[str, ...]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _activate(config: WebConfig) -> Active:
    signature = _signature(config.files)
    context = server_context(config.tls) if config.tls is not None else None
    return Active(config, context, signature)


class WebGuard:
    """Enforces the web config on the HTTP server's threads; thread-safe."""

    def __init__(
        self,
        config: WebConfig,
        path: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`config` as loaded at startup from `path` (None: no file, plain open HTTP)."""
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._active = _activate(config)
        self._failed: Signature | None = None  # the signature of the last files that failed
        self.reload_success = True
        self.reload_success_timestamp = time.time()
        # Successful logins: (user, hash) -> a keyed digest of the password, so that bcrypt
        # (tens of milliseconds by design) runs once per user and password, not per scrape.
        self._key = secrets.token_bytes(32)
        self._logins: dict[tuple[str, bytes], bytes] = {}
        self._tokens = 0.0
        self._refilled = clock()
        if config.rate_limit is not None:
            self._tokens = float(config.rate_limit.burst)

    # -- the config in force ----------------------------------------------------------------

    def current(self) -> Active:
        """The web config in force, loaded again first if one of its files changed."""
        with self._lock:
            active = self._active
            if self.path is None:
                return active
            now = _signature(active.config.files or (self.path,))
            if now == active.signature or now == self._failed:
                return active
            try:
                config = load_web_config(self.path)
                fresh = _activate(config)
            except (WebConfigError, OSError, ssl.SSLError, ValueError) as exc:
                self._failed = now
                self.reload_success = False
                problems = "; ".join(exc.problems) if isinstance(exc, WebConfigError) else str(exc)
                log.error(
                    "web config reload failed; keeping the previous one",
                    extra={"web_config": self.path, "problems": problems},
                )
                return active
            if config.rate_limit != active.config.rate_limit and config.rate_limit is not None:
                self._tokens = float(config.rate_limit.burst)
            if config.users != active.config.users:
                self._logins.clear()
            self._active, self._failed = fresh, None
            self.reload_success = True
            self.reload_success_timestamp = time.time()
            log.info("web config reloaded", extra={"web_config": self.path})
            return fresh

    # -- per connection ---------------------------------------------------------------------

    def accept(self, sock: socket.socket, active: Active) -> ssl.SSLSocket | None:
        """The TLS side of a new connection, or None (the connection is then to be closed).

        Plaintext HTTP gets Go's plain 400 answer rather than a handshake error, so that curl
        shows what is wrong. The handshake has HANDSHAKE_TIMEOUT seconds.
        """
        assert active.context is not None and active.config.tls is not None
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return None
        if not first:
            return None
        if first[0] != _TLS_HANDSHAKE_RECORD:
            with contextlib.suppress(OSError):
                sock.sendall(PLAIN_HTTP_ANSWER)
            return None
        tls = active.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", extra={"client": _peer(tls), "error": str(exc)})
            tls.close()
            return None
        allowed = active.config.tls.client_allowed_sans
        if allowed and not _san_allowed(tls.getpeercert() or {}, allowed):
            log.warning(
                "client certificate has no allowed subjectAltName; connection closed",
                extra={"client": _peer(tls)},
            )
            tls.close()
            return None
        return tls

    # -- per request ------------------------------------------------------------------------

    def admit(self, active: Active) -> bool:
        """Whether the rate limit lets one more request through (a token bucket)."""
        limit = active.config.rate_limit
        if limit is None:
            return True
        with self._lock:
            now = self._clock()
            self._tokens = min(
                float(limit.burst), self._tokens + (now - self._refilled) / limit.interval
            )
            self._refilled = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def authorized(self, active: Active, header: str | None) -> bool:
        """Whether `Authorization: Basic ...` names a user of basic_auth_users with its password.

        True when there are no users (no basic auth). An unknown user costs one bcrypt check all
        the same, so response times do not tell which user names exist.
        """
        users = dict(active.config.users)
        if not users:
            return True
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        digest = hmac.digest(self._key, password, hashlib.sha256)
        if hashed is not None:
            with self._lock:
                known = self._logins.get((user, hashed))
            if known is not None and hmac.compare_digest(known, digest):
                return True
        ok = _checkpw(password, hashed if hashed is not None else _dummy_hash())
        if ok and hashed is not None:
            with self._lock:
                self._logins[(user, hashed)] = digest
            return True
        return False


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt 5 refuses passwords over 72 bytes
        return False


_DUMMY: list[bytes] = []


def _dummy_hash() -> bytes:
    if not _DUMMY:
        _DUMMY.append(bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(10)))
    return _DUMMY[0]


def _san_allowed(cert: Mapping[str, object], allowed: tuple[str, ...]) -> bool:
    """exporter-toolkit's client_allowed_sans: any DNS, IP, e-mail or URI SAN listed exactly."""
    sans = cert.get("subjectAltName", ())
    kinds = {"DNS", "IP Address", "email", "URI"}
    if not isinstance(sans, tuple):
        return False
    for entry in sans:
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] in kinds:
            value = str(entry[1]).strip()
            if value in allowed or (entry[0] == "IP Address" and _same_ip(value, allowed)):
                return True
    return False


def _same_ip(value: str, allowed: tuple[str, ...]) -> bool:
    """Python spells an IPv6 SAN in full ("0:0:0:0:0:0:0:1"); compare addresses, not text."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    for item in allowed:
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(item) == ip:
                return True
    return False


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
