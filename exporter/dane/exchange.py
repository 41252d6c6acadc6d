"""One DNS query and its response over UDP or TCP, parsed leniently: a bad record is skipped.

dnspython refuses a whole message when one rdata is malformed (a TLSA record whose SHA-256 value
is not 32 bytes, say). For DANE such a record is merely unusable and the others still count, so
responses are parsed with `continue_on_error` and the skipped records are listed in the
message's `errors`. dnspython's own query helpers cannot parse that way, hence this module.
"""

from __future__ import annotations

import asyncio
import socket

import dns.exception
import dns.message


class MalformedResponse(Exception):
    """The name server's answer is not a DNS response to our query."""


def parse(wire: bytes, query: dns.message.Message) -> dns.message.Message:
    """The response in `wire` to `query`. Raises MalformedResponse."""
    try:
        response = dns.message.from_wire(wire, continue_on_error=True)
    except (dns.exception.DNSException, ValueError, IndexError) as exc:
        raise MalformedResponse(f"unreadable response: {type(exc).__name__}: {exc}") from exc
    if not query.is_response(response):
        raise MalformedResponse("the response does not answer the query (id or question)")
    return response


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, query: dns.message.Message, done: asyncio.Future[dns.message.Message]):
        self.query = query
        self.done = done

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.done.done():
            return
        # A datagram that does not carry our id is someone else's (RFC 5452 section 9.1):
        # keep waiting. One that does and cannot be read is the answer, and it is broken.
        if len(data) < 2 or int.from_bytes(data[:2], "big") != self.query.id:
            return
        try:
            self.done.set_result(parse(data, self.query))
        except MalformedResponse as exc:
            self.done.set_exception(exc)

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket the kernel reports ICMP port unreachable here.
        if not self.done.done():
            self.done.set_exception(exc)


async def exchange(
    query: dns.message.Message, address: str, port: int, *, tcp: bool = False
) -> dns.message.Message:
    """Send `query` to address:port and return the response. The caller bounds the time.

    Raises OSError (refused, unreachable) or MalformedResponse."""
    wire = query.to_wire()
    if tcp:
        return await _tcp(wire, query, address, port)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dns.message.Message] = loop.create_future()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Datagram(query, done), remote_addr=(address, port), family=family
    )
    try:
        transport.sendto(wire)
        return await done
    finally:
        transport.close()


async def _tcp(
    wire: bytes, query: dns.message.Message, address: str, port: int
) -> dns.message.Message:
    reader, writer = await asyncio.open_connection(address, port)
    try:
        writer.write(len(wire).to_bytes(2, "big") + wire)  # RFC 1035 section 4.2.2
        await writer.drain()
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise MalformedResponse("the name server closed the TCP connection early") from exc
    finally:
        writer.close()
    return parse(data, query)
