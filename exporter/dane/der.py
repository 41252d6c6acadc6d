"""Just enough DER to cut a certificate's SubjectPublicKeyInfo out of it, byte for byte.

A TLSA record with selector 1 covers the SPKI exactly as encoded in the certificate (RFC 6698
section 2.1.2). Re-encoding a parsed key could differ (an EC point's form, RSA parameters), and a
key of an algorithm the crypto library does not know must still match, so the bytes are cut out
of the certificate rather than rebuilt.
"""

from __future__ import annotations

SEQUENCE = 0x30
INTEGER = 0x02
EXPLICIT_0 = 0xA0  # [0] EXPLICIT Version


class DerError(ValueError):
    """The bytes are not the DER certificate structure this module expects."""


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The element at `pos`: (tag, start of its value, end of its value), within `end`."""
    if pos + 2 > end:
        raise DerError(f"truncated element at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-byte tag at offset {pos}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        # DER has no indefinite length (0x80); four length bytes are far beyond a certificate.
        if count == 0 or count > 4:
            raise DerError(f"unsupported length form 0x{first:02x} at offset {pos - 1}")
        if pos + count > end:
            raise DerError(f"truncated length at offset {pos}")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise DerError(f"element at offset {pos} runs past its container")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    got, start, stop = _tlv(data, pos, end)
    if got != tag:
        raise DerError(f"{what}: tag 0x{got:02x}, expected 0x{tag:02x}")
    return start, stop


def spki(cert_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER X.509 certificate (RFC 5280 section 4.1).

    Raises DerError (a ValueError) when the structure is not a certificate's."""
    data = bytes(cert_der)
    start, stop = _expect(data, 0, len(data), SEQUENCE, "Certificate")
    pos, tbs_end = _expect(data, start, stop, SEQUENCE, "tbsCertificate")
    tag, _, after = _tlv(data, pos, tbs_end)
    if tag == EXPLICIT_0:  # version, absent for v1
        pos = after
    _, pos = _expect(data, pos, tbs_end, INTEGER, "serialNumber")
    for what in ("signature", "issuer", "validity", "subject"):
        _, pos = _expect(data, pos, tbs_end, SEQUENCE, what)
    key_start = pos
    _, key_end = _expect(data, pos, tbs_end, SEQUENCE, "subjectPublicKeyInfo")
    return data[key_start:key_end]
