"""Name resolution for probes: the system resolver, or dnspython against configured servers."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import dns.asyncresolver
import dns.exception
import dns.resolver

Addresses = list[tuple[socket.AddressFamily, str]]
Resolver = Callable[[str, int], Awaitable[Addresses]]


class ResolveError(Exception):
    """The name has no address (`timeout` False) or the resolver did not answer (True)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def literal(host: str) -> Addresses | None:
    """An IP literal needs no lookup."""
    found = _literal(host)
    return None if found is None else [found]


@functools.lru_cache(maxsize=16384)  # hosts and addresses of the config: asked at every probe
def _literal(host: str) -> tuple[socket.AddressFamily, str] | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))


async def system_resolve(host: str, port: int) -> Addresses:
    """getaddrinfo, in the order the system prefers (RFC 6724)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        timeout = exc.errno == socket.EAI_AGAIN
        raise ResolveError(f"{host}: {exc.strerror}", timeout=timeout) from exc
    seen: dict[str, socket.AddressFamily] = {}
    for family, _, _, _, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), socket.AddressFamily(family))
    return [(family, addr) for addr, family in seen.items()]


class DnsResolver:
    """A and AAAA from the given name servers (host, port), never the system's configuration."""

    def __init__(self, nameservers: Sequence[tuple[str, int]], timeout: float = 5.0) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [ip for ip, _ in nameservers]
        ports = {port for _, port in nameservers}
        if len(ports) == 1:
            self._resolver.port = ports.pop()
        else:
            self._resolver.nameserver_ports = {ip: port for ip, port in nameservers}
        self._resolver.lifetime = timeout

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        return self._resolver

    async def __call__(self, host: str, port: int) -> Addresses:
        out: Addresses = []
        missing = []
        for rdtype, family in (("AAAA", socket.AF_INET6), ("A", socket.AF_INET)):
            try:
                answer = await self._resolver.resolve(host, rdtype, search=False)
            except dns.resolver.NXDOMAIN as exc:
                raise ResolveError(f"{host}: no such name (NXDOMAIN)") from exc
            except dns.resolver.NoAnswer:
                missing.append(rdtype)
                continue
            except dns.resolver.LifetimeTimeout as exc:
                raise ResolveError(f"{host}: name servers did not answer", timeout=True) from exc
            except (dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
                raise ResolveError(f"{host}: {exc}") from exc
            out.extend((family, rr.address) for rr in answer)
        if not out:
            raise ResolveError(f"{host}: no {' or '.join(missing)} record")
        # IPv4 first: what most MTAs still try first, and it keeps results stable across hosts.
        out.sort(key=lambda pair: pair[0] != socket.AF_INET)
        return out
