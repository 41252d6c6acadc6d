"""The HTTP endpoints, on their own thread: metrics, landing page, debug, health, reload, probe.

This layer only serves. What it shows comes from a `Backend` (the running service): a snapshot of
the state, the registry behind `/metrics`, and blocking calls for a reload and an on-demand probe,
which the backend runs on the event loop. Routes:

    GET  /                    landing page: every target and mail domain with its last verdict
    GET  /metrics             the exporter's registry; text or OpenMetrics by Accept, gzip if asked
    GET  /debug?target=NAME   the last scheduled result of NAME as a text report with transcript
    GET  /debug?domain=NAME   the last scheduled check of mail domain NAME as a text report
    GET  /probe?target=T      probe T now (a configured name, or host:port of a permitted host) and
                              return that probe's metrics; `&debug=true`: the report instead.
                              Within T's interval after its last probe, that probe's result
                              (X-Probe-Cached, Age), unless `&force=true` (exporter.service.manners)
    GET  /-/healthy           200 while the process serves
    GET  /-/ready             200 once the config is loaded and the scheduler runs, else 503
    POST /-/reload            reload the config: 200, or 500 with every problem (old one kept)

With a web config (`--web.config.file`, exporter.web) every connection and request goes through
its guard first: TLS and client certificates per connection; rate limit, basic auth and the
extra response headers per request, on every route.
"""

from __future__ import annotations

import gzip
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder, generate_latest, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.domains.report import render_text as render_domain
from exporter.model import ProbeResult, join_host_port
from exporter.report import render_text
from exporter.service.exposition import Answer
from exporter.service.landing import landing_page
from exporter.service.state import Snapshot
from exporter.web.guard import Active, WebGuard

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
# Request bodies are only ever empty (POST /-/reload); anything larger is not read.
MAX_BODY = 64 * 1024
# Seconds a connection may sit idle (between requests, or in the middle of one) before it is
# closed, so that clients that connect and say nothing cannot hold the server's threads for ever.
IDLE_TIMEOUT = 120.0


class ProbeRefused(Exception):
    """An on-demand probe that was not run, with the HTTP status and message that say why, and
    for how many seconds (Retry-After) when that is known."""

    def __init__(self, status: HTTPStatus, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class ProbeAnswer:
    """An on-demand probe's result; `cached_age` set when it is the result of an earlier probe
    (of `cached_age` seconds ago) rather than of a probe run for this request."""

    result: ProbeResult
    cached_age: float | None = None


class Backend(Protocol):
    """What the HTTP layer needs from the running service. Every method is called off the loop."""

    def metrics(self, accept: str, gzip: bool) -> Answer:
        """A /metrics answer for this Accept header, gzip-encoded if `gzip`."""
        ...

    def snapshot(self) -> Snapshot: ...

    def ready(self) -> bool: ...

    def reload(self) -> tuple[bool, str]:
        """Reload the config; (True, message) or (False, every problem, one per line)."""
        ...

    def probe(self, target: str, scrape_timeout: float | None, force: bool = False) -> ProbeAnswer:
        """Probe `target` now (or answer from its last probe) and wait; raises ProbeRefused."""
        ...

    def probe_registry(self, result: ProbeResult) -> CollectorRegistry:
        """A registry whose exposition is the metrics of this one result."""
        ...


class HttpServer:
    """The HTTP server and the thread that runs it."""

    def __init__(self, host: str, port: int, backend: Backend, web: WebGuard | None = None) -> None:
        """Bind now (OSError if that fails); "" means every interface, IPv6 and IPv4.
        `web` enforces a web config (TLS, basic auth, headers, rate limit)."""
        try:
            self._server = _Server(host, port, backend, web)
        except OSError:
            if host != "":
                raise
            # No IPv6 here (a container with it disabled, say): every IPv4 interface.
            self._server = _Server("0.0.0.0", port, backend, web)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http", kwargs={"poll_interval": 0.2}
        )

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (port 0 resolved)."""
        host, port = self._server.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        web = self._server.web
        scheme = "https" if web is not None and web.current().context is not None else "http"
        return f"{scheme}://{join_host_port(host, port)}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting requests and close the socket. Blocks until the serving loop ends."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def _bind_family(host: str) -> tuple[socket.AddressFamily, str, bool]:
    """(family, address, dual_stack) for a listen host; "" means every interface."""
    if host == "":
        if socket.has_ipv6:
            return socket.AF_INET6, "::", True
        return socket.AF_INET, "0.0.0.0", False
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0]), False


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a request stuck on a probe never blocks the process from exiting
    block_on_close = False

    def __init__(self, host: str, port: int, backend: Backend, web: WebGuard | None) -> None:
        self.address_family, address, self._dual_stack = _bind_family(host)
        self.backend = backend
        self.web = web
        super().__init__((address, port), _Handler)

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # On the connection's own thread: a slow TLS handshake never blocks accepting others.
        assert isinstance(request, socket.socket)
        active = self.web.current() if self.web is not None else None
        if active is None or active.context is None:
            super().finish_request(request, client_address)
            return
        assert self.web is not None
        tls = self.web.accept(request, active)
        if tls is None:
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN (a DNS query) only to fill
        # server_name, which nothing here uses; bind the socket and nothing more.
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


Route = Callable[["_Handler", dict[str, list[str]]], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    _extra_headers: tuple[tuple[str, str], ...] = ()

    def version_string(self) -> str:
        return f"smtp-tls-exporter/{__version__}"

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self._discard_body()
        web = self.server.web
        if web is not None and not self._admitted(web, web.current()):
            return
        route: Route
        if url.path == "/-/reload":
            route, allowed = _Handler.reload, ("POST", "PUT")
        elif url.path in _GET_ROUTES:
            route, allowed = _GET_ROUTES[url.path], ("GET", "HEAD")
        else:
            self.send_text(HTTPStatus.NOT_FOUND, f"{url.path} not found; see /\n")
            return
        if method not in allowed:
            self.send_text(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{method} is not allowed here; use {' or '.join(allowed)}\n",
                headers={"Allow": ", ".join(allowed)},
            )
            return
        try:
            route(self, parse_qs(url.query))
        except Exception:
            log.exception("error serving %s", url.path)
            self.send_text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the log\n")

    def _admitted(self, web: WebGuard, active: Active) -> bool:
        """Rate limit, then basic auth; False once the refusal is sent."""
        self._extra_headers = active.config.headers
        if not web.admit(active):
            self.send_text(
                HTTPStatus.TOO_MANY_REQUESTS, "Too many requests.\n", headers={"Retry-After": "1"}
            )
            return False
        if not web.authorized(active, self.headers.get("Authorization")):
            log.debug("unauthorized request", extra={"client": self.address_string()})
            self.send_text(
                HTTPStatus.UNAUTHORIZED,
                "Unauthorized.\n",
                headers={"WWW-Authenticate": 'Basic realm="smtp-tls-exporter", charset="UTF-8"'},
            )
            return False
        return True

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= MAX_BODY:
            self.rfile.read(length)
        elif length > MAX_BODY:
            self.close_connection = True

    # -- routes -----------------------------------------------------------------------------

    def metrics(self, query: dict[str, list[str]]) -> None:
        gzip = gzip_accepted(self.headers.get("Accept-Encoding", ""))
        answer = self.server.backend.metrics(self.headers.get("Accept", ""), gzip)
        headers = {"Vary": "Accept, Accept-Encoding"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        self.send_parts(HTTPStatus.OK, answer.content_type, answer.length, answer.parts, headers)

    def landing(self, query: dict[str, list[str]]) -> None:
        self.send_body(HTTPStatus.OK, HTML, landing_page(self.server.backend.snapshot()).encode())

    def debug(self, query: dict[str, list[str]]) -> None:
        domain = _param(query, "domain")
        if domain is not None:
            self.debug_domain(domain)
            return
        name = _param(query, "target")
        if name is None:
            self.send_text(HTTPStatus.BAD_REQUEST, "missing ?target=NAME or ?domain=NAME\n")
            return
        snap = self.server.backend.snapshot()
        if name not in {t.name for t in snap.targets}:
            self.send_text(HTTPStatus.NOT_FOUND, f"no configured target named {name!r}\n")
            return
        result = snap.results.get(name)
        if result is None:
            self.send_text(HTTPStatus.NOT_FOUND, f"{name}: its first probe has not finished yet\n")
            return
        started = _when(result.started_at)
        header = f"Last scheduled probe of {name}, started {started}\n\n"
        self.send_text(HTTPStatus.OK, header + render_text(result) + "\n")

    def debug_domain(self, name: str) -> None:
        snap = self.server.backend.snapshot()
        if name not in {d.name for d in snap.domains}:
            self.send_text(HTTPStatus.NOT_FOUND, f"no configured mail domain named {name!r}\n")
            return
        result = snap.domain_results.get(name)
        if result is None:
            self.send_text(HTTPStatus.NOT_FOUND, f"{name}: its first check has not finished yet\n")
            return
        header = f"Last scheduled check of {name}, started {_when(result.started_at)}\n\n"
        self.send_text(HTTPStatus.OK, header + render_domain(result) + "\n")

    def probe(self, query: dict[str, list[str]]) -> None:
        spec = _param(query, "target")
        if spec is None:
            self.send_text(HTTPStatus.BAD_REQUEST, "missing ?target=NAME or ?target=host:port\n")
            return
        backend = self.server.backend
        force = _param(query, "force") in ("true", "1")
        timeout = _scrape_timeout(self.headers.get(SCRAPE_TIMEOUT_HEADER))
        try:
            answer = backend.probe(spec, timeout, force)
        except ProbeRefused as refused:
            headers = {}
            if refused.retry_after is not None:
                headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
            self.send_text(refused.status, refused.message.rstrip("\n") + "\n", headers)
            return
        result = answer.result
        registry = backend.probe_registry(result)
        headers = {}
        if answer.cached_age is not None:
            # RFC 9111 section 5.1: Age, the seconds since the answer was made (the probe ran).
            headers = {CACHED_HEADER: "true", "Age": str(int(answer.cached_age))}
        if _param(query, "debug") in ("true", "1"):
            report = render_text(result)
            exposition = generate_latest(registry).decode()
            intro = ""
            if answer.cached_age is not None:
                intro = (
                    f"Result of the probe started {_when(result.started_at)} "
                    f"({answer.cached_age:.0f}s ago), within the target's interval; "
                    "&force=true probes again.\n\n"
                )
            body = f"{intro}{report}\n\nMetrics returned by this probe\n\n{exposition}"
            self.send_text(HTTPStatus.OK, body, headers)
        else:
            self.send_exposition(registry, headers)

    def healthy(self, query: dict[str, list[str]]) -> None:
        self.send_text(HTTPStatus.OK, "Healthy.\n")

    def ready(self, query: dict[str, list[str]]) -> None:
        if self.server.backend.ready():
            self.send_text(HTTPStatus.OK, "Ready.\n")
        else:
            self.send_text(HTTPStatus.SERVICE_UNAVAILABLE, "Not ready.\n")

    def reload(self, query: dict[str, list[str]]) -> None:
        ok, message = self.server.backend.reload()
        status = HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR
        self.send_text(status, message.rstrip("\n") + "\n")

    # -- responses --------------------------------------------------------------------------

    def send_exposition(
        self, registry: CollectorRegistry, extra: dict[str, str] | None = None
    ) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(registry)
        headers = {"Vary": "Accept, Accept-Encoding", **(extra or {})}
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self.send_body(HTTPStatus.OK, content_type, body, headers)

    def send_text(
        self, status: HTTPStatus, text: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_body(status, TEXT, text.encode("utf-8"), headers)

    def send_body(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_parts(status, content_type, len(body), (body,), headers)

    def send_parts(
        self,
        status: HTTPStatus,
        content_type: str,
        length: int,
        parts: Iterable[bytes],
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send an answer of `length` bytes written part by part, never joined."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        for key, value in self._extra_headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            for part in parts:
                self.wfile.write(part)

    def log_message(self, format: str, *args: object) -> None:
        log.debug(
            "http request",
            extra={"client": self.address_string(), "request": format % args},
        )


_GET_ROUTES: dict[str, Route] = {
    "/": _Handler.landing,
    "/metrics": _Handler.metrics,
    "/debug": _Handler.debug,
    "/probe": _Handler.probe,
    "/-/healthy": _Handler.healthy,
    "/-/ready": _Handler.ready,
}

# On a /probe answer that is the result of an earlier probe (with Age: its age in seconds).
CACHED_HEADER = "X-Probe-Cached"
# Prometheus sends its scrape timeout; an on-demand probe must answer within it.
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def _param(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _scrape_timeout(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds > 0 else None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
