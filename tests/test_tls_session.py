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
