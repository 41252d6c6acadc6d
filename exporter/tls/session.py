"""The client TLS context and what a finished handshake tells: version, cipher, served chain."""

from __future__ import annotations

import functools
import ssl
import warnings
from typing import Any

from exporter.model import TlsFacts

_VERSIONS = {
    "TLSv1.3": "TLS 1.3",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.1": "TLS 1.1",
    "TLSv1": "TLS 1.0",
    "SSLv3": "SSL 3.0",
}


@functools.lru_cache(maxsize=1)
def client_context() -> ssl.SSLContext:
    """One shared context that never verifies: verification happens apart (exporter.tls.verify),
    so the facts of an expired or untrusted certificate are still read (blackbox_exporter #1119)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # A monitor reports what a server offers instead of refusing to look: offer TLS 1.0 and 1.1
    # too, and accept weak keys and ciphers (OpenSSL 3 hides them below security level 1), so a
    # legacy server shows as "TLS 1.0" rather than as a failed handshake. Nothing secret is sent
    # over these connections. A modern server still picks TLS 1.3 or 1.2 from the same offer.
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


# What the protocol check (exporter.checks) offers, one at a time, spelled as by `tls_facts`.
PINNED_VERSIONS = {
    "TLS 1.0": ssl.TLSVersion.TLSv1,
    "TLS 1.1": ssl.TLSVersion.TLSv1_1,
    "TLS 1.2": ssl.TLSVersion.TLSv1_2,
}


class VersionUnavailable(Exception):
    """This Python and OpenSSL cannot offer the version at all (compiled out, or refused by the
    library before a ClientHello exists): a refused handshake would say nothing of the server."""


@functools.lru_cache(maxsize=len(PINNED_VERSIONS))
def pinned_context(version: str) -> ssl.SSLContext:
    """A context like `client_context()` that offers only `version` ("TLS 1.0", ...).

    Raises VersionUnavailable when no ClientHello for it can be built here. OpenSSL 3 allows TLS
    1.0 and 1.1 only below security level 1, hence @SECLEVEL=0, as in client_context."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # Python deprecates naming TLS 1.0 and 1.1; naming them is this check's whole point.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = PINNED_VERSIONS[version]
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="version.invalid")
    try:
        probe.do_handshake()
    except ssl.SSLWantReadError:
        return ctx  # a ClientHello was written: the version can be offered
    except ssl.SSLError as exc:
        raise VersionUnavailable(f"this OpenSSL cannot offer {version}: {exc}") from exc
    raise VersionUnavailable(f"this OpenSSL cannot offer {version}")


def tls_facts(sslobj: ssl.SSLObject) -> TlsFacts:
    version = sslobj.version() or ""
    cipher = sslobj.cipher()
    return TlsFacts(
        version=_VERSIONS.get(version, version),
        cipher=cipher[0] if cipher else "",
        cipher_bits=cipher[2] if cipher else None,
    )


def peer_chain(sslobj: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer served, leaf first, as DER, whatever verification said.

    Python 3.13 made this public as `get_unverified_chain()`, returning DER bytes; on 3.11 and
    3.12 the same call exists only on the private `_sslobj`, returning certificate objects.
    Without either, only the leaf is known.
    """
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        inner = getattr(sslobj, "_sslobj", None)
        getter = getattr(inner, "get_unverified_chain", None)
    if getter is not None:
        items = getter() or []
        return [_der(item) for item in items]
    leaf = sslobj.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _der(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    return bytes(item.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
