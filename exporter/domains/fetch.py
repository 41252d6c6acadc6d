"""DNS lookups of a mail domain (MX, TXT) with dnspython, and the MTA-STS policy fetch over HTTPS.

DNS goes to the configured name servers (`Dns.configured`) or the system's resolv.conf
(`Dns.system`). The policy fetch resolves `mta-sts.DOMAIN` through the same `Dns`, connects to
that address, and sends SNI and Host `mta-sts.DOMAIN`, verifying the certificate for that name,
as a sending MTA does. HTTP is the standard library's http.client, which never follows redirects.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT

from exporter import __version__
from exporter.domains.model import CheckError, CheckReason, MxHost, MxSet, MxStatus
from exporter.resolve import DnsResolver, ResolveError, Resolver, system_resolve

POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 section 3.3: senders may cap the body at 64 KiB
USER_AGENT = f"smtp-tls-exporter/{__version__}"


@dataclass(frozen=True)
class Dns:
    """The DNS of every domain check: dnspython for MX and TXT, `addresses` for A/AAAA."""

    resolver: dns.asyncresolver.Resolver
    addresses: Resolver

    @classmethod
    def configured(cls, nameservers: Sequence[tuple[str, int]], timeout: float = 5.0) -> Dns:
        """The given name servers only, never the system's configuration."""
        r = DnsResolver(nameservers, timeout)
        return cls(r.resolver, r)

    @classmethod
    def system(cls, timeout: float = 5.0) -> Dns:
        """The name servers of /etc/resolv.conf, and getaddrinfo for addresses."""
        resolver = dns.asyncresolver.Resolver(configure=True)
        resolver.lifetime = timeout
        return cls(resolver, system_resolve)


class DnsError(Exception):
    """A lookup failed: no answer in time, SERVFAIL, REFUSED (not NXDOMAIN or an empty answer)."""


async def lookup_txt(dnsx: Dns, name: str) -> tuple[str, ...]:
    """Every TXT record at `name`, each one's strings joined (RFC 7208 3.3 style). NXDOMAIN or no
    TXT: (). Raises DnsError."""
    answer = await _query(dnsx, name, "TXT")
    out = []
    for rr in answer:
        if not isinstance(rr, TXT):
            continue
        joined = b"".join(rr.strings)
        # Non-ASCII bytes become U+FFFD, which no record grammar admits: bad_record, not a crash.
        out.append(joined.decode("ascii", errors="replace"))
    return tuple(out)


async def lookup_mx(dnsx: Dns, domain: str) -> MxSet:
    """The domain's MX hosts (RFC 5321 section 5.1), null MX (RFC 7505), or why there are none."""
    try:
        answer = await _query(dnsx, domain, "MX", nxdomain_ok=False)
    except _NoSuchDomain:
        return MxSet(MxStatus.NONE, detail=f"{domain}: no such domain (NXDOMAIN)")
    except DnsError as exc:
        return MxSet(MxStatus.ERROR, detail=str(exc))
    hosts: list[MxHost] = []
    null = 0
    for rr in answer:
        if not isinstance(rr, MX):
            continue
        if rr.exchange == dns.name.root:
            null += 1
            continue
        hosts.append(MxHost(rr.exchange.to_text(omit_final_dot=True).lower(), int(rr.preference)))
    if null and not hosts:
        return MxSet(MxStatus.NULL, detail="null MX (RFC 7505): the domain accepts no mail")
    if hosts:
        hosts.sort(key=lambda h: (h.preference, h.name))
        # A host listed twice is probed once, at its most preferred position.
        first: dict[str, MxHost] = {}
        for h in hosts:
            first.setdefault(h.name, h)
        hosts = list(first.values())
        detail = "null MX beside other MX records (RFC 7505 section 3 forbids it)" if null else ""
        return MxSet(MxStatus.MX, tuple(hosts), detail)
    # No MX at all: the domain itself is the MX if it has an address (RFC 5321 section 5.1).
    try:
        await dnsx.addresses(domain, 25)
    except ResolveError as exc:
        status = MxStatus.ERROR if exc.timeout else MxStatus.NONE
        return MxSet(status, detail=f"no MX record, and no address: {exc}")
    return MxSet(
        MxStatus.IMPLICIT,
        (MxHost(domain, 0),),
        "no MX record: the domain's own address is its MX (RFC 5321 section 5.1)",
    )


class _NoSuchDomain(Exception):
    pass


async def _query(
    dnsx: Dns, name: str, rdtype: str, *, nxdomain_ok: bool = True
) -> Sequence[dns.rdata.Rdata]:
    try:
        qname = dns.name.from_text(name)  # absolute: no search list ever applies
        answer = await dnsx.resolver.resolve(qname, rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        if nxdomain_ok:
            return ()
        raise _NoSuchDomain(name) from None
    except dns.resolver.NoAnswer:
        return ()
    except dns.resolver.LifetimeTimeout as exc:
        raise DnsError(f"{name} {rdtype}: the name servers did not answer in time") from exc
    except dns.resolver.NoNameservers as exc:
        raise DnsError(f"{name} {rdtype}: no name server gave an answer ({exc})") from exc
    except dns.exception.DNSException as exc:
        raise DnsError(f"{name} {rdtype}: {exc}") from exc
    return list(answer)


# -- the policy fetch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyResponse:
    url: str
    address: str  # the IP the policy came from
    text: str  # the body, at most MAX_POLICY_BYTES, decoded as UTF-8
    content_type: str


def policy_host(domain: str) -> str:
    return f"mta-sts.{domain}"


def policy_url(domain: str) -> str:
    return f"https://{policy_host(domain)}{POLICY_PATH}"


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification as a sending MTA does it: the web PKI (or `ca_file`), name checked."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CheckError(CheckReason.TLS_ERROR, f"cannot load CA file {ca_file}: {exc}") from exc


async def fetch_policy(
    domain: str, dnsx: Dns, *, ca_file: str | None = None, timeout: float = 10.0
) -> PolicyResponse:
    """GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt within `timeout` seconds, or raise
    CheckError: dns_error, connection_error, tls_error, timeout, redirect (3xx, never followed),
    http_status (not 200), content_type (not text/plain), too_large (over 64 KiB)."""
    host = policy_host(domain)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    context = tls_context(ca_file)
    try:
        async with asyncio.timeout(timeout):
            addresses = await dnsx.addresses(host, 443)
    except TimeoutError:
        raise CheckError(CheckReason.DNS_ERROR, f"{host}: no address within {timeout:g}s") from None
    except ResolveError as exc:
        raise CheckError(CheckReason.DNS_ERROR, str(exc)) from exc
    if not addresses:
        raise CheckError(CheckReason.DNS_ERROR, f"{host}: no address")
    last: CheckError | None = None
    for _, address in addresses:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            return await _fetch_from(host, address, context, remaining)
        except CheckError as exc:
            if exc.reason is not CheckReason.CONNECTION_ERROR:
                raise
            last = exc  # another address may answer
    if last is not None:
        raise last
    raise CheckError(CheckReason.TIMEOUT, f"{host}: no answer within {timeout:g}s")


async def _fetch_from(
    host: str, address: str, context: ssl.SSLContext, timeout: float
) -> PolicyResponse:
    """One exchange in a worker thread; past the deadline its socket is shut down under it, so
    a server that trickles bytes cannot hold it (per-read socket timeouts alone would not)."""
    exchange = _Exchange(host, address, context, timeout)
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, exchange.run)
    try:
        done, _ = await asyncio.wait({future}, timeout=timeout)
    except asyncio.CancelledError:
        exchange.abort()
        _discard(future)
        raise
    if not done:
        exchange.abort()
        _discard(future)
        raise CheckError(
            CheckReason.TIMEOUT, f"{host} ({address}): no complete answer within {timeout:g}s"
        )
    return future.result()


def _discard(future: asyncio.Future[PolicyResponse]) -> None:
    # The thread ends promptly once its socket is shut down; its outcome no longer matters.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `host` (SNI, Host header, certificate name) at an address resolved beforehand."""

    def __init__(
        self,
        host: str,
        address: str,
        context: ssl.SSLContext,
        timeout: float,
        exchange: _Exchange,
    ) -> None:
        super().__init__(host, 443, timeout=timeout, context=context)
        self._address = address
        self._tls = context
        self._exchange = exchange

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        tls = self._tls.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
        self._exchange.register(tls)
        tls.do_handshake()
        self.sock = tls


class _Exchange:
    def __init__(self, host: str, address: str, context: ssl.SSLContext, timeout: float) -> None:
        self.host = host
        self.address = address
        self.context = context
        self.timeout = timeout
        self._lock = threading.Lock()
        self._aborted = False
        self._sock: socket.socket | None = None

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            aborted = self._aborted
        if aborted:
            sock.close()
            raise TimeoutError("deadline passed")

    def abort(self) -> None:
        """From the event loop: unblock the worker thread by shutting its socket down."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            # The plain socket's shutdown(2), not SSLSocket.shutdown: no TLS alert from here.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def run(self) -> PolicyResponse:
        where = f"{self.host} ({self.address})"
        conn = _PinnedHTTPSConnection(self.host, self.address, self.context, self.timeout, self)
        try:
            return self._get(conn)
        except CheckError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise CheckError(CheckReason.TLS_ERROR, f"{where}: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            if self._aborted:
                raise CheckError(CheckReason.TIMEOUT, f"{where}: deadline passed") from exc
            raise CheckError(CheckReason.TLS_ERROR, f"{where}: {exc.reason or exc}") from exc
        except TimeoutError as exc:
            raise CheckError(CheckReason.TIMEOUT, f"{where}: timed out") from exc
        except http.client.RemoteDisconnected as exc:
            reason = CheckReason.TIMEOUT if self._aborted else CheckReason.CONNECTION_ERROR
            raise CheckError(reason, f"{where}: closed without an answer") from exc
        except http.client.HTTPException as exc:
            if self._aborted:
                raise CheckError(CheckReason.TIMEOUT, f"{where}: deadline passed") from exc
            raise CheckError(
                CheckReason.HTTP_STATUS, f"{where}: malformed HTTP response ({exc!r})"
            ) from exc
        except OSError as exc:
            if self._aborted:
                raise CheckError(CheckReason.TIMEOUT, f"{where}: deadline passed") from exc
            raise CheckError(
                CheckReason.CONNECTION_ERROR, f"{where}: {exc.strerror or exc}"
            ) from exc
        finally:
            conn.close()

    def _get(self, conn: http.client.HTTPSConnection) -> PolicyResponse:
        url = f"https://{self.host}{POLICY_PATH}"
        conn.request(
            "GET",
            POLICY_PATH,
            headers={"User-Agent": USER_AGENT, "Accept": "text/plain", "Connection": "close"},
        )
        resp = conn.getresponse()
        status = f"HTTP {resp.status} {resp.reason}".rstrip()
        if 300 <= resp.status < 400:
            # RFC 8461 section 3.3: senders must not follow redirects.
            location = resp.getheader("Location") or "(no Location)"
            raise CheckError(CheckReason.REDIRECT, f"{url}: {status} to {location}")
        if resp.status != 200:
            raise CheckError(CheckReason.HTTP_STATUS, f"{url}: {status}")
        content_type = resp.getheader("Content-Type")
        if content_type is None or media_type(content_type) != "text/plain":
            shown = "none" if content_type is None else repr(content_type)
            raise CheckError(
                CheckReason.CONTENT_TYPE, f"{url}: Content-Type {shown}, not text/plain"
            )
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > MAX_POLICY_BYTES:
            raise CheckError(
                CheckReason.TOO_LARGE, f"{url}: {int(length)} bytes, over {MAX_POLICY_BYTES}"
            )
        body = resp.read(MAX_POLICY_BYTES + 1)  # one byte more tells "over the cap"
        if len(body) > MAX_POLICY_BYTES:
            raise CheckError(CheckReason.TOO_LARGE, f"{url}: over {MAX_POLICY_BYTES} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckError(CheckReason.PARSE_ERROR, f"{url}: not UTF-8 text ({exc})") from exc
        return PolicyResponse(url, self.address, text, content_type)


def media_type(content_type: str) -> str:
    """`text/plain` from `Text/Plain; charset=utf-8`. Not email.message's get_content_type(),
    which turns a malformed value into text/plain."""
    return content_type.split(";", 1)[0].strip(" \t").lower()
