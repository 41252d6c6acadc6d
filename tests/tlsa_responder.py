"""A scripted name server on loopback that answers TLSA queries as a test tells it to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rrset

from exporter.dane.model import TlsaRecord


class TlsaResponder(asyncio.DatagramProtocol):
    """Answers every query with `records` at the question's name (AD set while `secure`), or
    with `rcode`; says nothing while `silent`. Holds its answers while `hold` is set and
    `release` is not. `queries` lists the names asked; `asked` is set at each query."""

    def __init__(self) -> None:
        self.records: list[TlsaRecord] = []
        self.secure = True
        self.rcode = dns.rcode.NOERROR
        self.silent = False
        self.hold = False
        self.release = asyncio.Event()
        self.asked = asyncio.Event()
        self.queries: list[str] = []
        self.address = ("127.0.0.1", 0)
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def nameservers(self) -> tuple[tuple[str, int], ...]:
        return (self.address,)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.queries.append(query.question[0].name.to_text(omit_final_dot=True))
        self.asked.set()
        if self.silent:
            return
        task = asyncio.get_running_loop().create_task(self._answer(query, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, query: dns.message.Message, addr: tuple[str, int]) -> None:
        if self.hold:
            await self.release.wait()
        response = dns.message.make_response(query)
        response.set_rcode(self.rcode)
        if self.secure:
            response.flags |= dns.flags.AD
        if self.rcode == dns.rcode.NOERROR and self.records:
            rdatas = [dns.rdata.from_text("IN", "TLSA", r.text()) for r in self.records]
            response.answer.append(dns.rrset.from_rdata_list(query.question[0].name, 300, rdatas))
        assert self._transport is not None
        self._transport.sendto(response.to_wire(), addr)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()


@contextlib.asynccontextmanager
async def tlsa_responder() -> AsyncIterator[TlsaResponder]:
    loop = asyncio.get_running_loop()
    responder = TlsaResponder()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: responder, local_addr=("127.0.0.1", 0)
    )
    responder.address = transport.get_extra_info("sockname")[:2]
    try:
        yield responder
    finally:
        await responder.close()
