"""all_addresses: every A and AAAA of a host probed on its own, through real DNS (dnsmasq)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator

import pytest

from exporter.addresses import MAX_ADDRESSES
from exporter.model import Reason, Stage, Target
from exporter.probe import probe
from exporter.resolve import Addresses, DnsResolver
from tests.conftest import need
from tests.fixtures.dns import DnsServer, PoolDns, hold_port, ipv6_loopback
from tests.scripted import Handler, smtp_session


def starttls_server(tls: ssl.SSLContext) -> Handler:
    return lambda r, w: smtp_session(r, w, tls)


@contextlib.asynccontextmanager
async def one_port(handler: Handler, good: list[str], dead: list[str]) -> AsyncIterator[int]:
    """`handler` serving on every `good` address and nothing (refused) on every `dead` one, all
    on one port, as a name's addresses share its target's port."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    for _ in range(20):
        servers: list[asyncio.Server] = []
        held: list[socket.socket] = []
        try:
            first = await asyncio.start_server(on_client, good[0], 0)
            servers.append(first)
            port = int(first.sockets[0].getsockname()[1])
            for host in good[1:]:
                servers.append(await asyncio.start_server(on_client, host, port))
            for host in dead:
                sock = hold_port(host, port)
                if sock is None:
                    raise OSError(f"{host}:{port} in use")
                held.append(sock)
        except OSError:
            for server in servers:
                server.close()
            for sock in held:
                sock.close()
            continue  # that port is taken on another address: pick another
        try:
            yield port
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()
            for sock in held:
                sock.close()
        return
    pytest.fail("no port free on every address")


async def test_each_address_of_a_name_is_probed(
    dns_server: DnsServer, server_tls: ssl.SSLContext
) -> None:
    need(ipv6_loopback(), "no IPv6 loopback (::1) on this machine")
    async with one_port(starttls_server(server_tls), ["127.0.0.1", "::1"], ["127.0.0.2"]) as port:
        target = Target.create(
            f"multi.{dns_server.zone}",
            port,
            server_name="scripted.test",
            all_addresses=True,
            timeout=3,
        )
        result = await probe(target, resolver=DnsResolver(dns_server.nameservers, timeout=2))
    by_address = {r.peer_address: r for r in result.addresses}
    assert set(by_address) == {"127.0.0.1", "127.0.0.2", "::1"}
    assert {a: r.address_family for a, r in by_address.items()} == {
        "127.0.0.1": "ipv4",
        "127.0.0.2": "ipv4",
        "::1": "ipv6",
    }
    assert by_address["127.0.0.1"].success and by_address["::1"].success
    dead = by_address["127.0.0.2"]
    assert dead.failure is not None
    assert (dead.failure.stage, dead.failure.reason) == (Stage.CONNECT, Reason.CONNECTION_REFUSED)
    # each probe is the probe of one address: pinned, same name for SNI and the certificate
    for r in result.addresses:
        assert r.target == dataclasses.replace(target, address=r.peer_address)
        assert r.target.address == r.peer_address and r.target.host == target.host
        assert r.phases.resolve == result.phases.resolve  # the one lookup they share
    good = by_address["::1"]
    assert good.tls is not None and good.certificate is not None
    # the sum: one address failed, so the target did, and the failure names the address
    assert not result.success
    assert result.failure is not None
    assert result.failure.stage is Stage.CONNECT
    assert result.failure.detail.startswith("127.0.0.2 (1 of 3 addresses failed): ")
    assert result.peer_address is None and result.tls is None
    texts = [e.text for e in result.transcript]
    assert texts[0].startswith(f"multi.{dns_server.zone}: 3 addresses: ")
    assert "-- 127.0.0.2: connect: connection_refused" in texts


async def test_every_address_good_is_a_success(
    dns_server: DnsServer, server_tls: ssl.SSLContext
) -> None:
    need(ipv6_loopback(), "no IPv6 loopback (::1) on this machine")
    async with one_port(starttls_server(server_tls), ["127.0.0.1", "127.0.0.2", "::1"], []) as port:
        target = Target.create(f"multi.{dns_server.zone}", port, all_addresses=True, timeout=3)
        result = await probe(target, resolver=DnsResolver(dns_server.nameservers, timeout=2))
    assert result.success and result.failure is None
    assert sorted(r.peer_address or "" for r in result.addresses) == [
        "127.0.0.1",
        "127.0.0.2",
        "::1",
    ]


async def test_a_name_that_does_not_resolve_has_one_failure_and_no_addresses(
    dns_server: DnsServer,
) -> None:
    target = Target.create(f"nonesuch.{dns_server.zone}", 25, all_addresses=True, timeout=3)
    result = await probe(target, resolver=DnsResolver(dns_server.nameservers, timeout=2))
    assert result.addresses == ()
    assert result.failure is not None
    assert (result.failure.stage, result.failure.reason) == (
        Stage.RESOLVE,
        Reason.NAME_NOT_RESOLVED,
    )
    assert result.phases.resolve is not None


async def test_an_ip_literal_is_its_only_address(server_tls: ssl.SSLContext) -> None:
    async with one_port(starttls_server(server_tls), ["127.0.0.1"], []) as port:
        result = await probe(Target.create("127.0.0.1", port, all_addresses=True, timeout=3))
    assert result.success
    assert [(r.peer_address, r.address_family) for r in result.addresses] == [("127.0.0.1", "ipv4")]


async def test_at_most_max_addresses_are_probed() -> None:
    # A resolver stand-in: the cap is about how many addresses an answer may hold, which the
    # test zone cannot publish on loopback without holding forty ports.
    many: Addresses = [(socket.AF_INET, f"127.0.9.{i}") for i in range(1, MAX_ADDRESSES + 5)]

    async def resolver(host: str, port: int) -> Addresses:
        return many

    held = [hold_port(address, 0) for _, address in many[:1]]  # a port nobody listens on
    assert held[0] is not None
    port = held[0].getsockname()[1]
    try:
        target = Target.create("many.example.test", port, all_addresses=True, timeout=3)
        result = await probe(target, resolver=resolver)
    finally:
        held[0].close()
    assert [r.peer_address for r in result.addresses] == [a for _, a in many[:MAX_ADDRESSES]]
    assert f", the first {MAX_ADDRESSES} probed" in result.transcript[0].text


async def test_one_bad_node_behind_a_postfix_name(pool_dns: PoolDns) -> None:
    """The name points at relay_25, a dead IPv4 address and (with IPv6 loopback) a dead ::1."""
    target = Target.create(
        pool_dns.name,
        25,
        server_name="mail.example.test",
        all_addresses=True,
        timeout=5,
    )
    result = await probe(target, resolver=DnsResolver(pool_dns.server.nameservers, timeout=2))
    by_address = {r.peer_address: r for r in result.addresses}
    assert set(by_address) == set(pool_dns.addresses)
    good = by_address[pool_dns.good]
    assert good.success, good.failure
    assert good.smtp.greeting.startswith("mail.example.test ESMTP")
    for address in pool_dns.addresses[1:]:
        failure = by_address[address].failure
        assert failure is not None
        assert failure.reason is Reason.CONNECTION_REFUSED
    if pool_dns.ipv6 is not None:
        assert by_address[pool_dns.ipv6].address_family == "ipv6"
    assert not result.success
