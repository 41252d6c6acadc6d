"""Smoke test: each listener of the Postfix fixture behaves as its name says (stdlib clients)."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import smtplib
import socket
import ssl
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from tests.fixtures.postfix import Listener, PostfixServer

pytestmark = pytest.mark.postfix

SERVER_NAME = "mail.example.test"
EHLO_NAME = "probe.example.test"
TIMEOUT = 10.0

# OpenSSL X509_V_ERR_* codes carried by ssl.SSLCertVerificationError.verify_code
CERT_HAS_EXPIRED = 10
DEPTH_ZERO_SELF_SIGNED_CERT = 18
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
HOSTNAME_MISMATCH = 62


def verifying_context(*ca_files: str) -> ssl.SSLContext:
    """A client context that trusts only the given PEM files and checks the host name."""
    ctx = ssl.create_default_context(cafile=ca_files[0])
    for extra in ca_files[1:]:
        ctx.load_verify_locations(cafile=extra)
    return ctx


def unverified_context() -> ssl.SSLContext:
    """A client context that accepts any certificate, for looking at what is served."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(lst: Listener) -> smtplib.SMTP:
    smtp = smtplib.SMTP(lst.host, lst.port, local_hostname=EHLO_NAME, timeout=TIMEOUT)
    smtp.ehlo()
    return smtp


def starttls(
    lst: Listener, ctx: ssl.SSLContext, server_hostname: str = SERVER_NAME
) -> ssl.SSLSocket:
    """EHLO, check STARTTLS is offered, upgrade and return the TLS socket (caller closes)."""
    smtp = connect(lst)
    try:
        assert smtp.has_extn("starttls"), f"{lst.name} does not offer STARTTLS"
        code, _ = smtp.docmd("STARTTLS")
        assert code == 220
        assert smtp.sock is not None
        return ctx.wrap_socket(smtp.sock, server_hostname=server_hostname)
    except BaseException:
        smtp.close()
        raise


def verify_error(lst: Listener, ctx: ssl.SSLContext) -> ssl.SSLCertVerificationError:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        starttls(lst, ctx).close()
    return info.value


def served_cert(lst: Listener) -> x509.Certificate:
    """The leaf the listener serves, fetched without verification."""
    with starttls(lst, unverified_context()) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def common_name(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def read_reply(fp: io.BufferedReader) -> list[bytes]:
    """Read one (possibly multi-line) SMTP reply from a binary file object."""
    lines: list[bytes] = []
    while True:
        line = fp.readline()
        assert line, "connection closed mid-reply"
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return lines


@pytest.mark.parametrize("name", ["relay_25", "submission_587", "relay_2525", "expiring_soon"])
def test_starttls_verifies_against_root(postfix: PostfixServer, name: str) -> None:
    lst = postfix.listener(name)
    # ca.pem holds only the root, so success also proves the intermediate is served.
    with starttls(lst, verifying_context(lst.ca_file)) as tls:
        cert = tls.getpeercert()
    assert cert is not None
    assert ssl.cert_time_to_seconds(str(cert["notAfter"])) == lst.leaf_not_after
    assert ("IP Address", lst.host) in cert["subjectAltName"]
    with starttls(lst, verifying_context(lst.ca_file), server_hostname=lst.host):
        pass  # the IP SAN verifies too


def test_expiring_soon_expires_in_five_days(postfix: PostfixServer) -> None:
    days_left = (postfix.listener("expiring_soon").leaf_not_after - time.time()) / 86400
    assert 4.9 < days_left <= 5.0


def test_smtps_465_speaks_tls_first(postfix: PostfixServer) -> None:
    lst = postfix.listener("smtps_465")
    assert (lst.port, lst.mode) == (465, "implicit_tls")
    ctx = verifying_context(lst.ca_file)
    with smtplib.SMTP_SSL(
        lst.host, lst.port, local_hostname=EHLO_NAME, timeout=TIMEOUT, context=ctx
    ) as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert not smtp.has_extn("starttls")


def test_no_starttls_is_not_offered(postfix: PostfixServer) -> None:
    smtp = connect(postfix.listener("no_starttls"))
    try:
        assert not smtp.has_extn("starttls")
    finally:
        smtp.quit()


def test_tls12_only_negotiates_tls12(postfix: PostfixServer) -> None:
    lst = postfix.listener("tls12_only")
    ctx = verifying_context(lst.ca_file)
    assert ctx.maximum_version in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3)
    with starttls(lst, ctx) as tls:
        assert tls.version() == "TLSv1.2"
    with starttls(postfix.listener("relay_25"), ctx) as tls:
        assert tls.version() == "TLSv1.3"


def pinned(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A context that offers one TLS version only; OpenSSL 3 needs security level 0 below 1.2."""
    ctx = unverified_context()
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1 and TLSv1_1
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


LEGACY = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)


def test_postfix_default_protocols_still_accept_tls10_and_tls11(postfix: PostfixServer) -> None:
    # Postfix 3.x's default smtpd_tls_protocols is >=TLSv1: relay_25 and most listeners accept
    # the legacy versions, modern_tls and tls12_only do not.
    for name in ("relay_25", "modern_tls", "tls12_only"):
        for version in (*LEGACY, ssl.TLSVersion.TLSv1_2):
            expected = version is ssl.TLSVersion.TLSv1_2 or name == "relay_25"
            try:
                with starttls(postfix.listener(name), pinned(version)) as tls:
                    got = tls.version()
            except ssl.SSLError as exc:
                assert not expected, f"{name} refused {version.name}: {exc}"
            else:
                assert expected, f"{name} accepted {version.name}"
                assert got == version.name.replace("_", ".")
    with starttls(postfix.listener("modern_tls"), unverified_context()) as tls:
        assert tls.version() == "TLSv1.3"


def test_submission_encrypt_refuses_mail_before_starttls(postfix: PostfixServer) -> None:
    smtp = connect(postfix.listener("submission_encrypt"))
    assert not smtp.has_extn("auth")
    code, text = smtp.docmd("MAIL", "FROM:<>")
    assert (code, text[:5]) == (530, b"5.7.0")
    smtp.starttls(context=verifying_context(postfix.ca_file))
    smtp.ehlo()
    assert smtp.has_extn("auth")
    assert smtp.docmd("MAIL", "FROM:<>")[0] == 250
    smtp.rset()
    smtp.quit()


def _auth_before_and_after_tls(lst: Listener) -> tuple[bool, bool]:
    smtp = connect(lst)
    before = smtp.has_extn("auth")
    smtp.starttls(context=verifying_context(lst.ca_file))
    smtp.ehlo()
    after = smtp.has_extn("auth")
    smtp.quit()
    return before, after


def test_submission_offers_auth_only_after_tls(postfix: PostfixServer) -> None:
    assert _auth_before_and_after_tls(postfix.listener("submission_587")) == (False, True)


def test_auth_in_clear_offers_auth_before_tls(postfix: PostfixServer) -> None:
    lst = postfix.listener("auth_in_clear")
    assert lst.port == 587
    assert _auth_before_and_after_tls(lst) == (True, True)


def test_multiline_greeting_then_starttls(postfix: PostfixServer) -> None:
    lst = postfix.listener("multiline_greeting")
    with socket.create_connection((lst.host, lst.port), timeout=TIMEOUT) as sock:
        fp = sock.makefile("rb")
        greeting = read_reply(fp)
        assert len(greeting) >= 2, greeting
        assert greeting[0].startswith(b"220-") and greeting[-1].startswith(b"220 ")
        assert all(SERVER_NAME.encode() in line for line in greeting)
        sock.sendall(f"EHLO {EHLO_NAME}\r\n".encode())
        assert b"250-STARTTLS" in read_reply(fp)
        sock.sendall(b"STARTTLS\r\n")
        assert read_reply(fp)[0].startswith(b"220 ")
        ctx = verifying_context(lst.ca_file)
        with ctx.wrap_socket(sock, server_hostname=SERVER_NAME) as tls:
            assert tls.version() is not None


def test_expired_fails_as_expired(postfix: PostfixServer) -> None:
    lst = postfix.listener("expired")
    assert verify_error(lst, verifying_context(lst.ca_file)).verify_code == CERT_HAS_EXPIRED
    cert = served_cert(lst)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_after_utc < now - dt.timedelta(days=9)
    assert cert.not_valid_before_utc < now - dt.timedelta(days=399)
    assert cert.not_valid_after_utc.timestamp() == lst.leaf_not_after
    assert "Intermediate" in common_name(cert.issuer)


def test_self_signed_is_not_trusted(postfix: PostfixServer) -> None:
    lst = postfix.listener("self_signed")
    error = verify_error(lst, verifying_context(lst.ca_file))
    assert error.verify_code == DEPTH_ZERO_SELF_SIGNED_CERT
    cert = served_cert(lst)
    assert cert.issuer == cert.subject
    assert SERVER_NAME in san(cert).get_values_for_type(x509.DNSName)


def test_wrong_name_fails_on_the_name_only(postfix: PostfixServer) -> None:
    lst = postfix.listener("wrong_name")
    ctx = verifying_context(lst.ca_file)
    assert verify_error(lst, ctx).verify_code == HOSTNAME_MISMATCH
    with starttls(lst, ctx, server_hostname="wrong.example.test"):
        pass  # the chain itself is good
    names = san(served_cert(lst))
    assert names.get_values_for_type(x509.DNSName) == ["wrong.example.test"]
    assert names.get_values_for_type(x509.IPAddress) == []


def test_no_intermediate_serves_only_the_leaf(postfix: PostfixServer) -> None:
    lst = postfix.listener("no_intermediate")
    root_only = verifying_context(lst.ca_file)
    assert verify_error(lst, root_only).verify_code == UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    # With the intermediate supplied locally the same leaf verifies: it was just not served.
    intermediate = str(Path(lst.ca_file).with_name("intermediate.pem"))
    with starttls(lst, verifying_context(lst.ca_file, intermediate)):
        pass
    cert = served_cert(lst)
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    uris = [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
    ]
    assert uris == ["http://ca.example.test/intermediate.der"]
    assert ipaddress.ip_address(lst.host) in san(cert).get_values_for_type(x509.IPAddress)


def test_listeners_are_distinct_loopback_addresses(postfix: PostfixServer) -> None:
    hosts = [lst.host for lst in postfix.listeners.values()]
    assert len(set(hosts)) == len(hosts) == 15
    assert all(ipaddress.ip_address(h) in ipaddress.ip_network("127.0.0.0/8") for h in hosts)
    assert {lst.server_name for lst in postfix.listeners.values()} == {SERVER_NAME}
    assert Path(postfix.log_file).is_file()
