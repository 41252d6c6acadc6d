"""exporter.tls.session.describe: what a probe's failure detail says of an OpenSSL error."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from exporter.tls.session import describe


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (SSL.Error([("SSL routines", "", "wrong version number")]), "wrong version number"),
        (
            SSL.Error(
                [
                    ("SSL routines", "", "tlsv1 alert protocol version"),
                    ("SSL routines", "", "tlsv1 alert protocol version"),
                    ("SSL routines", "", "no protocols available"),
                ]
            ),
            "tlsv1 alert protocol version; no protocols available",
        ),
        (SSL.Error([]), "TLS error (OpenSSL gave no reason)"),
        (SSL.Error([("SSL routines", "", "")]), "[('SSL routines', '', '')]"),
        (SSL.SysCallError(-1, "Unexpected EOF"), "the connection ended in the middle of TLS"),
        (SSL.SysCallError(104, "ECONNRESET"), "system error during TLS: ECONNRESET"),
        (SSL.Error("something else"), "something else"),
    ],
)
def test_describe(error: SSL.Error, text: str) -> None:
    assert describe(error).startswith(text)


def test_a_live_refusal_is_described_by_openssl_reason() -> None:
    """A ClientHello answered with garbage: OpenSSL's own reason, not a Python repr."""
    from exporter.tls.session import ClientTls, TlsFailure, client_context

    tls = ClientTls(client_context(), "mail.example.test")
    assert tls.handshake() is False and tls.outgoing().startswith(b"\x16\x03")
    tls.receive(b"220 mail.example.test ESMTP\r\n")
    with pytest.raises(TlsFailure) as caught:
        tls.handshake()
    assert "[" not in str(caught.value) and str(caught.value)


def _hello_extensions(record: bytes) -> dict[int, bytes]:
    """The extensions of the ClientHello in the first TLS record, by type (RFC 8446 4.1.2)."""
    assert record[0] == 22 and record[5] == 1  # handshake record, ClientHello
    body = record[9:]
    pos = 2 + 32  # legacy_version, random
    pos += 1 + body[pos]  # legacy_session_id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
    pos += 1 + body[pos]  # legacy_compression_methods
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    out = {}
    while pos < end:
        kind, size = (
            int.from_bytes(body[pos : pos + 2], "big"),
            int.from_bytes(body[pos + 2 : pos + 4], "big"),
        )
        out[kind] = body[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return out


X25519, X25519MLKEM768 = 0x001D, 0x11EC


@pytest.mark.parametrize("pinned", [None, "TLS 1.2"])
def test_the_hello_offers_the_classical_groups_with_one_x25519_key_share(
    pinned: str | None,
) -> None:
    from exporter.tls.session import ClientTls, client_context, pinned_context

    tls = ClientTls(client_context() if pinned is None else pinned_context(pinned), "mx.test")
    assert tls.handshake() is False
    extensions = _hello_extensions(tls.outgoing())
    groups_ext = extensions[10]  # supported_groups
    groups = [int.from_bytes(groups_ext[i : i + 2], "big") for i in range(2, len(groups_ext), 2)]
    assert groups[0] == X25519 and X25519MLKEM768 not in groups
    if pinned is None:  # TLS 1.3 offered: key shares (RFC 8446 4.2.8)
        shares, pos, found = extensions[51], 2, []
        while pos < len(shares):
            found.append(int.from_bytes(shares[pos : pos + 2], "big"))
            pos += 4 + int.from_bytes(shares[pos + 2 : pos + 4], "big")
        assert found == [X25519]
