"""Hand-built DANE results, for collector and report tests."""

from __future__ import annotations

import dataclasses

from exporter.dane.model import (
    DaneReason,
    DaneResult,
    LookupStatus,
    TlsaAnswer,
    TlsaRecord,
    Unusable,
)
from exporter.model import ProbeResult

HOST = "mail.example.test"
QNAME = f"_25._tcp.{HOST}"
EE = TlsaRecord(3, 1, 1, bytes.fromhex("69a47ce96482" + "ab" * 26))
NEXT = TlsaRecord(3, 1, 1, bytes.fromhex("44969644fbea" + "cd" * 26))  # the next key, published
PKIX = TlsaRecord(1, 1, 1, bytes.fromhex("ef" * 32))
SERVER = "127.0.0.1:53"


def answer(*records: TlsaRecord, secure: bool = True, malformed: int = 0) -> TlsaAnswer:
    return TlsaAnswer(
        QNAME,
        LookupStatus.FOUND,
        secure,
        records,
        QNAME,
        server=SERVER,
        malformed=tuple(f"ValueError: bad digest {i}" for i in range(malformed)),
    )


def dane(reason: DaneReason, **more: object) -> DaneResult:
    """A DANE result with the three facts that go with `reason` (docs/dane.md, "Reasons")."""
    present = reason not in _NOT_PRESENT
    secure = reason not in _NOT_PRESENT | {DaneReason.INSECURE}
    fields: dict[str, object] = {
        "mx_host": HOST,
        "tlsa_name": QNAME,
        "tlsa_present": present,
        "dnssec_secure": secure or reason is DaneReason.NO_TLSA,
        "match": reason is DaneReason.OK,
        "reason": reason,
        "detail": f"detail of {reason}",
        "reference_names": (HOST,),
        "started_at": 1_760_000_000.0 - 20,
        "duration": 0.004,
    }
    if present:
        fields["records"] = (EE, NEXT)
        fields["lookup"] = answer(EE, NEXT, secure=secure)
    if reason is DaneReason.OK:
        fields.update(matched=EE, matched_depth=0)
    fields.update(more)
    return DaneResult(**fields)  # type: ignore[arg-type]


_NOT_PRESENT = {
    DaneReason.NO_TLSA,
    DaneReason.BOGUS,
    DaneReason.SERVFAIL,
    DaneReason.DNS_ERROR,
    DaneReason.TIMEOUT,
    DaneReason.INTERNAL_ERROR,
}


def unusable() -> DaneResult:
    """Secure records, none usable: a PKIX-EE record and one unreadable one."""
    return dane(
        DaneReason.NO_USABLE_RECORDS,
        records=(PKIX,),
        unusable=((PKIX, Unusable.PKIX_USAGE),),
        lookup=answer(PKIX, malformed=1),
    )


def checked(result: ProbeResult, reason: DaneReason = DaneReason.OK) -> ProbeResult:
    return dataclasses.replace(result, dane=dane(reason))
