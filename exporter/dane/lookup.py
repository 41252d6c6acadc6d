"""TLSA lookup at `_25._tcp.HOST` from a validating resolver, with its DNSSEC verdict (AD bit).

What is sent: one query `_25._tcp.HOST. IN TLSA` per configured name server, in order, until
one answers, with RD, AD (RFC 6840 section 5.7: the client understands AD) and EDNS0 DO set, over
UDP with TCP fallback on truncation. The name servers must be a DNSSEC-validating resolver that
the exporter trusts to set AD honestly, reached over a path that cannot be tampered with
(loopback or a protected link, RFC 4035 section 4.9.3 and RFC 7672 section 2.1.1); never the
public internet.

A SERVFAIL is blamed on DNSSEC (`bogus`) when the resolver says so with an Extended DNS Error
code 1 to 12 (RFC 8914 section 4), or, for resolvers without EDE, when the same query with CD
set (checking disabled, RFC 4035 section 3.2.2) gets an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from exporter.dane.exchange import MalformedResponse, exchange
from exporter.dane.model import LookupStatus, TlsaAnswer, TlsaRecord
from exporter.dane.records import from_rdatas

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation
MAX_CNAME_HOPS = 8
# RFC 8914 section 4: codes 1 to 12 are DNSSEC failures (unsupported algorithm or digest,
# indeterminate, bogus, expired or not yet valid signatures, missing DNSKEY, RRSIG or NSEC…),
# except 3 (stale answer) and 4 (forged answer).
DNSSEC_EDE = frozenset(range(1, 13)) - {3, 4}
# When no server gives an answer, the most telling failure wins.
_FAILURE_ORDER = (
    LookupStatus.BOGUS,
    LookupStatus.SERVFAIL,
    LookupStatus.DNS_ERROR,
    LookupStatus.TIMEOUT,
)


def tlsa_name(host: str, port: int = 25) -> str:
    """`_25._tcp.mx.example.com` (RFC 6698 section 3, RFC 7672 section 2.2)."""
    return f"_{port}._tcp.{host.rstrip('.').lower()}"


@dataclass(frozen=True)
class _Attempt:
    status: LookupStatus
    detail: str
    server: str


class DaneDns:
    """TLSA lookups against the given validating resolvers (host, port), never the system's."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]],
        timeout: float = 5.0,
        *,
        cd_retry: bool = True,
    ) -> None:
        if not nameservers:
            raise ValueError("DANE needs at least one validating name server")
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        self.cd_retry = cd_retry

    async def tlsa(self, host: str, port: int = 25) -> TlsaAnswer:
        """The TLSA RRset for `host`'s SMTP port. Never raises (but on cancellation)."""
        text = tlsa_name(host, port)
        try:
            qname = dns.name.from_text(text)
        except dns.exception.DNSException as exc:
            return TlsaAnswer(text, LookupStatus.DNS_ERROR, False, detail=f"{text}: {exc}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        failures: list[_Attempt] = []
        for left, (address, server_port) in zip(
            range(len(self.nameservers), 0, -1), self.nameservers, strict=True
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            server = f"[{address}]:{server_port}" if ":" in address else f"{address}:{server_port}"
            # Share what is left among the servers not yet asked, so one silent server cannot
            # use up the whole deadline.
            budget = remaining / left
            outcome = await self._ask(qname, address, server_port, budget, server)
            if isinstance(outcome, TlsaAnswer):
                return outcome
            failures.append(outcome)
        if not failures:
            return TlsaAnswer(
                text, LookupStatus.TIMEOUT, False, detail=f"{text}: no time left to ask"
            )
        worst = min(failures, key=lambda a: _FAILURE_ORDER.index(a.status))
        details = "; ".join(f"{a.server}: {a.detail}" for a in failures)
        return TlsaAnswer(
            text, worst.status, False, detail=f"{text}: {details}", server=worst.server
        )

    async def _ask(
        self, qname: dns.name.Name, address: str, port: int, budget: float, server: str
    ) -> TlsaAnswer | _Attempt:
        loop = asyncio.get_running_loop()
        until = loop.time() + budget
        try:
            response = await _query(qname, address, port, budget, cd=False)
        except TimeoutError:
            return _Attempt(LookupStatus.TIMEOUT, f"no answer within {budget:.3g}s", server)
        except (OSError, MalformedResponse) as exc:
            return _Attempt(LookupStatus.DNS_ERROR, _error_text(exc), server)
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return read_answer(response, qname, server)
        if rcode != dns.rcode.SERVFAIL:
            return _Attempt(LookupStatus.DNS_ERROR, f"rcode {dns.rcode.to_text(rcode)}", server)
        ede = extended_errors(response)
        detail = "SERVFAIL" + "".join(f"; EDE {code} {text}".rstrip() for code, text in ede)
        if any(code in DNSSEC_EDE for code, _ in ede):
            return _Attempt(LookupStatus.BOGUS, detail, server)
        # The second query gets what is left of this server's share, no more.
        left = until - loop.time()
        if self.cd_retry and left > 0 and await _answers_unchecked(qname, address, port, left):
            detail += "; answered with checking disabled (CD): DNSSEC validation fails"
            return _Attempt(LookupStatus.BOGUS, detail, server)
        return _Attempt(LookupStatus.SERVFAIL, detail, server)


async def _query(
    qname: dns.name.Name, address: str, port: int, timeout: float, *, cd: bool
) -> dns.message.Message:
    query = dns.message.make_query(
        qname, dns.rdatatype.TLSA, want_dnssec=True, payload=EDNS_PAYLOAD
    )
    query.flags |= dns.flags.AD
    if cd:
        query.flags |= dns.flags.CD
    async with asyncio.timeout(timeout):
        response = await exchange(query, address, port)
        if response.flags & dns.flags.TC:
            response = await exchange(query, address, port, tcp=True)
    return response


async def _answers_unchecked(qname: dns.name.Name, address: str, port: int, timeout: float) -> bool:
    try:
        response = await _query(qname, address, port, timeout, cd=True)
    except (TimeoutError, OSError, MalformedResponse):
        return False
    return response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no name server on that port)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc)


def extended_errors(response: dns.message.Message) -> tuple[tuple[int, str], ...]:
    """The response's Extended DNS Errors (RFC 8914) as (code, text)."""
    return tuple(
        (int(opt.code), opt.text or "")
        for opt in response.options
        if isinstance(opt, dns.edns.EDEOption)
    )


def read_answer(response: dns.message.Message, qname: dns.name.Name, server: str) -> TlsaAnswer:
    """A NOERROR or NXDOMAIN response as a TlsaAnswer: the TLSA RRset at the end of the CNAME
    chain from `qname`, or none. The AD bit covers the whole answer (RFC 4035 section 3.2.3)."""
    text = qname.to_text(omit_final_dot=True)
    secure = bool(response.flags & dns.flags.AD)
    malformed = tuple(f"{type(e.exception).__name__}: {e.exception}" for e in response.errors)
    name = qname
    for _ in range(MAX_CNAME_HOPS + 1):
        tlsa = _rrset(response, name, dns.rdatatype.TLSA)
        if tlsa is not None:
            records: tuple[TlsaRecord, ...] = from_rdatas(tlsa)
            owner = name.to_text(omit_final_dot=True)
            if records:
                return TlsaAnswer(
                    text,
                    LookupStatus.FOUND,
                    secure,
                    records,
                    owner,
                    server=server,
                    malformed=malformed,
                )
            break
        cname = _rrset(response, name, dns.rdatatype.CNAME)
        if cname is None:
            break
        name = cname[0].target
    else:
        return TlsaAnswer(
            text,
            LookupStatus.DNS_ERROR,
            False,
            detail=f"{text}: CNAME chain longer than {MAX_CNAME_HOPS}",
            server=server,
        )
    if malformed and response.rcode() == dns.rcode.NOERROR:
        # Every record of the answer was unreadable: TLSA records exist, none can be used.
        return TlsaAnswer(
            text,
            LookupStatus.FOUND,
            secure,
            owner=name.to_text(omit_final_dot=True),
            detail=f"{text}: {len(malformed)} unreadable record(s): {'; '.join(malformed)}",
            server=server,
            malformed=malformed,
        )
    how = "NXDOMAIN" if response.rcode() == dns.rcode.NXDOMAIN else "no TLSA record (NODATA)"
    via = "" if name == qname else f" (via CNAME to {name.to_text(omit_final_dot=True)})"
    return TlsaAnswer(text, LookupStatus.NONE, secure, detail=f"{text}: {how}{via}", server=server)


def _rrset(
    response: dns.message.Message, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


__all__ = ["DaneDns", "extended_errors", "read_answer", "tlsa_name"]
