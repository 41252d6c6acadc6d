"""The client side of TLS: contexts, one connection's TLS over memory buffers, and what a
finished handshake tells (version, cipher, served chain).

TLS runs on pyOpenSSL, over the OpenSSL that cryptography's wheels carry, rather than on
Python's `ssl` module, which uses the system's OpenSSL (Debian 12: 3.0, whose public-key
decoding makes a client handshake about 40% dearer than on 3.5 and later). pyOpenSSL also gives
the served chain through a public API. Python's `ssl` still serves the exporter's own HTTPS
(exporter.web) and the MTA-STS policy fetch (exporter.domains)."""

from __future__ import annotations

import contextlib
import functools

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

from exporter.model import TlsFacts

_VERSIONS = {
    "TLSv1.3": "TLS 1.3",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.1": "TLS 1.1",
    "TLSv1": "TLS 1.0",
    "SSLv3": "SSL 3.0",
}
_OUT_CHUNK = 64 * 1024  # bytes per read of what TLS has for the socket

# The key-exchange groups offered, in order: OpenSSL 3.0's default list, as s_time, Go's crypto/tls
# before 1.24 (blackbox_exporter 0.23) and most MTAs offer today, with a key share for X25519
# only. OpenSSL 3.5 and later would first offer the hybrid X25519MLKEM768 and send its key share
# as well: ML-KEM work for the prober and for every monitored server that takes it, at each
# probe (about 5% of a STARTTLS probe's CPU here), for a group no metric reports. Listed but
# without a key share it would be worse: a server preferring it asks again (HelloRetryRequest).
GROUPS = b"X25519:P-256:X448:P-384:P-521:ffdhe2048:ffdhe3072"


class TlsFailure(Exception):
    """The handshake or a record failed: the alert received or sent, or what OpenSSL refused."""


def _new_context(minimum: int, maximum: int | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_min_proto_version(minimum)
    if maximum is not None:
        ctx.set_max_proto_version(maximum)
    # A monitor reports what a server offers instead of refusing to look: offer TLS 1.0 and 1.1
    # too, and accept weak keys and ciphers (OpenSSL 3 hides them below security level 1), so a
    # legacy server shows as "TLS 1.0" rather than as a failed handshake. Nothing secret is sent
    # over these connections. A modern server still picks TLS 1.3 or 1.2 from the same offer.
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    # pyOpenSSL has no call for the groups; cryptography's binding has OpenSSL's.
    if Binding.lib.SSL_CTX_set1_curves_list(ctx._context, GROUPS) != 1:
        raise RuntimeError(f"OpenSSL refused the groups {GROUPS.decode()}")
    return ctx


@functools.lru_cache(maxsize=1)
def client_context() -> SSL.Context:
    """One shared context that never verifies: verification happens apart (exporter.tls.verify),
    so the facts of an expired or untrusted certificate are still read (blackbox_exporter #1119)."""
    return _new_context(SSL.TLS1_VERSION)


# What the protocol check (exporter.checks) offers, one at a time, spelled as by `tls_facts`.
PINNED_VERSIONS = {
    "TLS 1.0": SSL.TLS1_VERSION,
    "TLS 1.1": SSL.TLS1_1_VERSION,
    "TLS 1.2": SSL.TLS1_2_VERSION,
}


class VersionUnavailable(Exception):
    """This OpenSSL cannot offer the version at all (compiled out, or refused by the library
    before a ClientHello exists): a refused handshake would say nothing of the server."""


@functools.lru_cache(maxsize=len(PINNED_VERSIONS))
def pinned_context(version: str) -> SSL.Context:
    """A context like `client_context()` that offers only `version` ("TLS 1.0", ...).

    Raises VersionUnavailable when no ClientHello for it can be built here. OpenSSL 3 allows TLS
    1.0 and 1.1 only below security level 1, hence @SECLEVEL=0, as in client_context."""
    number = PINNED_VERSIONS[version]
    ctx = _new_context(number, number)
    trial = ClientTls(ctx, "version.invalid")
    try:
        done = trial.handshake()
    except TlsFailure as exc:
        raise VersionUnavailable(f"this OpenSSL cannot offer {version}: {exc}") from exc
    if done or not trial.outgoing():
        raise VersionUnavailable(f"this OpenSSL cannot offer {version}")
    return ctx  # a ClientHello was written: the version can be offered


@functools.lru_cache(maxsize=1024)
def _facts(version: str, cipher: str, bits: int | None) -> TlsFacts:
    # A handful of combinations among all servers: every kept result shares one object rather
    # than each adding one for the garbage collector to walk.
    return TlsFacts(version=version, cipher=cipher, cipher_bits=bits)


class ClientTls:
    """The client side of one TLS connection over memory buffers: the caller moves the bytes
    (`receive` what the socket gave, send what `outgoing` returns)."""

    __slots__ = ("_conn",)

    def __init__(self, context: SSL.Context, server_name: str | None) -> None:
        conn = SSL.Connection(context, None)
        if server_name:
            conn.set_tlsext_host_name(_sni_bytes(server_name))
        conn.set_connect_state()
        self._conn = conn

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        self._conn.bio_write(data)

    def outgoing(self) -> bytes:
        """Everything TLS has written for the socket since the last call (b"" if nothing)."""
        parts = []
        while True:
            try:
                chunk = self._conn.bio_read(_OUT_CHUNK)
            except SSL.WantReadError:
                break
            parts.append(chunk)
            if len(chunk) < _OUT_CHUNK:
                break
        return b"".join(parts)

    def handshake(self) -> bool:
        """Advance the handshake: True when done, False when it waits for the server.
        Raises TlsFailure."""
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TlsFailure(describe(exc)) from None
        return True

    def read(self, size: int) -> bytes | None:
        """Decrypted application data; None when a whole record has not arrived yet, b"" at the
        server's close_notify. Raises TlsFailure."""
        try:
            return self._conn.recv(size)
        except SSL.WantReadError:
            return None
        except SSL.ZeroReturnError:
            return b""
        except SSL.Error as exc:
            raise TlsFailure(describe(exc)) from None

    def write(self, data: bytes) -> None:
        """Encrypt `data` (sent on the next `outgoing`). Raises TlsFailure."""
        try:
            self._conn.sendall(data)
        except SSL.Error as exc:
            raise TlsFailure(describe(exc)) from None

    def close_notify(self) -> None:
        """Queue our close_notify alert (sent on the next `outgoing`)."""
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()

    def facts(self) -> TlsFacts:
        version = self._conn.get_protocol_version_name()
        return _facts(
            _VERSIONS.get(version, version),
            self._conn.get_cipher_name() or "",
            self._conn.get_cipher_bits(),
        )

    def cipher_name(self) -> str:
        return self._conn.get_cipher_name() or ""

    def chain(self) -> list[bytes]:
        """The certificates the peer served, leaf first, as DER, whatever verification says."""
        served = self._conn.get_peer_cert_chain() or []
        return [crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) for cert in served]


def describe(exc: SSL.Error) -> str:
    """OpenSSL's reasons, e.g. "wrong version number" or "tlsv1 alert protocol version"."""
    if isinstance(exc, SSL.SysCallError):
        code, text = ((*exc.args, None, None))[:2]
        if code == -1:
            return "the connection ended in the middle of TLS (unexpected EOF)"
        return f"system error during TLS: {text or code}"
    errors = exc.args[0] if exc.args else None
    if isinstance(errors, list):
        reasons = [str(e[2]) for e in errors if isinstance(e, tuple) and len(e) == 3 and e[2]]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
        if not errors:
            return "TLS error (OpenSSL gave no reason)"
    return str(exc) or type(exc).__name__


def _sni_bytes(name: str) -> bytes:
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        return name.encode("idna")
