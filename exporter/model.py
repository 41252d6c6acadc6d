"""Plain frozen data shared by the probe, the collector and the reports: targets, results."""

from __future__ import annotations

import enum
import marshal
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from exporter.dane.model import DaneResult

# RFC 8314 section 3.3: 465 is implicit TLS; every other SMTP port (25, 587, 2525) upgrades with
# STARTTLS (RFC 3207).
IMPLICIT_TLS_PORTS = frozenset({465})
# Submission ports: a client must not send mail without a verified certificate (RFC 8314 section 5).
# Relay ports (25, 2525) carry opportunistic MTA-to-MTA TLS, where the certificate is reported on.
SUBMISSION_PORTS = frozenset({465, 587})


class Mode(enum.StrEnum):
    IMPLICIT_TLS = "implicit_tls"
    STARTTLS = "starttls"

    @classmethod
    def for_port(cls, port: int) -> Mode:
        return cls.IMPLICIT_TLS if port in IMPLICIT_TLS_PORTS else cls.STARTTLS


class VerifyPolicy(enum.StrEnum):
    REQUIRED = "required"  # a certificate problem fails the probe
    REPORT = "report"  # certificate problems are reported, the probe still succeeds

    @classmethod
    def for_port(cls, port: int) -> VerifyPolicy:
        return cls.REQUIRED if port in SUBMISSION_PORTS else cls.REPORT


DEFAULT_CHECKS_INTERVAL = (
    86400.0  # the opt-in checks change with software and config, not by the minute
)


@dataclass(frozen=True)
class Checks:
    """The opt-in security checks of one endpoint (exporter.checks; docs/checks.md), each in a
    connection of its own, every `interval` seconds."""

    starttls_injection: bool = False  # STARTTLS and NOOP in one write (RFC 3207 section 4.2)
    protocols: bool = False  # one handshake each at TLS 1.0, 1.1 and 1.2 only
    submission_requires_tls: bool = False  # MAIL FROM:<> before STARTTLS refused (RFC 8314)
    interval: float = DEFAULT_CHECKS_INTERVAL

    @property
    def enabled(self) -> bool:
        return self.starttls_injection or self.protocols or self.submission_requires_tls


@dataclass(frozen=True)
class Target:
    """One endpoint to probe. Build it with `Target.create`, which fills the defaults."""

    name: str
    host: str
    port: int
    mode: Mode
    verify: VerifyPolicy
    server_name: str  # SNI and the name the certificate must match
    ehlo_name: str | None = None  # None: the machine's FQDN
    ca_file: str | None = None  # None: the system trust store
    timeout: float = 10.0  # seconds for the whole probe
    interval: float = 60.0  # seconds between scheduled probes
    labels: tuple[tuple[str, str], ...] = ()  # static labels, sorted by name
    all_addresses: bool = False  # probe every A and AAAA of `host`, each on its own
    address: str | None = None  # connect here instead of resolving `host` (one of all_addresses)
    checks: Checks = Checks()
    # DANE (exporter.dane, docs/dane.md): after each probe, its served chain against the TLSA
    # records at _25._tcp.HOST; `dane_names` are further names a DANE-TA leaf may carry (the
    # next-hop domain, RFC 7672 section 3.2.2).
    dane: bool = False
    dane_names: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        host: str,
        port: int,
        *,
        name: str | None = None,
        mode: Mode | None = None,
        verify: VerifyPolicy | None = None,
        server_name: str | None = None,
        ehlo_name: str | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        interval: float = 60.0,
        labels: dict[str, str] | None = None,
        all_addresses: bool = False,
        checks: Checks | None = None,
        dane: bool = False,
        dane_names: tuple[str, ...] = (),
    ) -> Target:
        return cls(
            name=name or join_host_port(host, port),
            host=host,
            port=port,
            mode=mode or Mode.for_port(port),
            verify=verify or VerifyPolicy.for_port(port),
            server_name=server_name or host,
            ehlo_name=ehlo_name,
            ca_file=ca_file,
            timeout=timeout,
            interval=interval,
            labels=tuple(sorted((labels or {}).items())),
            all_addresses=all_addresses,
            checks=checks or Checks(),
            dane=dane,
            dane_names=dane_names,
        )


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Stage(enum.StrEnum):
    """Where a probe stopped. A closed list: docs/failures.md describes each."""

    RESOLVE = "resolve"
    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    TLS_HANDSHAKE = "tls_handshake"
    EHLO_TLS = "ehlo_tls"  # the EHLO repeated inside TLS
    CERTIFICATE = "certificate"
    MAIL_FROM = "mail_from"  # the submission check's MAIL FROM:<> and RSET before TLS
    INTERNAL = "internal"


class Reason(enum.StrEnum):
    """Why a probe failed. A closed list: docs/failures.md describes each, a test produces each."""

    NAME_NOT_RESOLVED = "name_not_resolved"
    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    UNREACHABLE = "unreachable"
    CONNECTION_ERROR = "connection_error"
    CONNECTION_CLOSED = "connection_closed"
    GREETING_REJECTED = "greeting_rejected"
    TLS_ON_STARTTLS_PORT = "tls_on_starttls_port"
    PROTOCOL_ERROR = "protocol_error"
    REPLY_TOO_LARGE = "reply_too_large"
    EHLO_REJECTED = "ehlo_rejected"
    STARTTLS_NOT_ADVERTISED = "starttls_not_advertised"
    STARTTLS_REJECTED = "starttls_rejected"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    PLAINTEXT_ON_IMPLICIT_TLS_PORT = "plaintext_on_implicit_tls_port"
    # certificate verification, failing the probe only when the target's verify policy is required;
    # the same values as VerifyReason
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    SELF_SIGNED = "self_signed"
    UNKNOWN_ISSUER = "unknown_issuer"
    INCOMPLETE_CHAIN = "incomplete_chain"
    UNTRUSTED = "untrusted"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    NO_CERTIFICATE = "no_certificate"
    INTERNAL_ERROR = "internal_error"


class VerifyReason(enum.StrEnum):
    """The outcome of certificate verification, `ok` or the first problem found."""

    OK = "ok"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    SELF_SIGNED = "self_signed"
    UNKNOWN_ISSUER = "unknown_issuer"
    INCOMPLETE_CHAIN = "incomplete_chain"
    UNTRUSTED = "untrusted"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    NO_CERTIFICATE = "no_certificate"


@dataclass(frozen=True)
class Failure:
    stage: Stage
    reason: Reason
    detail: str = ""  # for the log and the transcript, never a label


@dataclass(frozen=True)
class Phases:
    """Seconds spent in each phase (None: the phase did not run). `ehlo` sums both EHLOs."""

    resolve: float | None = None
    connect: float | None = None
    greeting: float | None = None
    ehlo: float | None = None
    starttls: float | None = None
    tls_handshake: float | None = None
    total: float = 0.0

    def items(self) -> list[tuple[str, float]]:
        pairs = [
            ("resolve", self.resolve),
            ("connect", self.connect),
            ("greeting", self.greeting),
            ("ehlo", self.ehlo),
            ("starttls", self.starttls),
            ("tls_handshake", self.tls_handshake),
            ("total", self.total),
        ]
        return [(k, v) for k, v in pairs if v is not None]


@dataclass(frozen=True)
class SmtpFacts:
    greeting_code: int | None = None
    greeting: str = ""  # the greeting's text lines, joined by newlines
    starttls_advertised: bool | None = None  # None: not learnt (implicit TLS or failed before EHLO)
    auth_before_tls: tuple[str, ...] = ()  # AUTH mechanisms offered in the clear (RFC 8314)
    extensions_before_tls: tuple[str, ...] = ()  # EHLO keywords, upper case
    extensions_after_tls: tuple[str, ...] = ()
    auth_after_tls: tuple[str, ...] = ()
    # RFC 3207 section 4.2: bytes the server sent after its 220 to STARTTLS and before TLS;
    # they are discarded, and their presence is a sign of a broken or tampered path.
    plaintext_after_starttls: bool = False


@dataclass(frozen=True)
class TlsFacts:
    version: str  # spelled as blackbox_exporter does: "TLS 1.3"
    cipher: str  # OpenSSL cipher name, e.g. "TLS_AES_256_GCM_SHA384"
    cipher_bits: int | None = None


@dataclass(frozen=True)
class CertFacts:
    """Facts about one X.509 certificate, read whether or not it verified."""

    subject: str
    subject_cn: str | None
    issuer: str
    serial: str  # hex, upper case
    not_before: float  # unix seconds
    not_after: float  # unix seconds
    fingerprint_sha256: str  # hex, lower case
    sans_dns: tuple[str, ...] = ()
    sans_ip: tuple[str, ...] = ()
    key_type: str = ""  # RSA, EC, Ed25519, Ed448, DSA, unknown
    key_bits: int | None = None
    signature_algorithm: str = ""
    self_issued: bool = False

    def days_until_expiry(self, now: float) -> float:
        return (self.not_after - now) / 86400.0


@dataclass(frozen=True)
class Verification:
    trusted: bool  # the chain builds to the trust store and is within its validity period
    hostname_match: bool  # the leaf is valid for the target's server name
    reason: VerifyReason
    detail: str = ""
    trust_store: str = "system"  # "system" or the CA file's path


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    at: float  # seconds since the probe started
    kind: str  # "C" client sent, "S" server sent, "tls" TLS event, "info"
    text: str


Row = tuple[float, str, str]


class Transcript(Sequence[TranscriptEntry]):
    """A dialogue's transcript, a sequence of TranscriptEntry kept compact: its exact
    (at, kind, text) rows marshalled and zlib-compressed into one bytes object (about 470 bytes
    for a good STARTTLS probe instead of 2.2 KB of tuples, and nothing for the garbage
    collector to walk), unpacked when read, each entry built then, `at` rounded to the
    microsecond. Equal to any sequence of the same entries."""

    __slots__ = ("_len", "_packed")

    def __init__(self, entries: Iterable[TranscriptEntry | Row] = ()) -> None:
        self._pack(
            tuple(
                e if type(e) is tuple else (e.at, e.kind, e.text)  # type: ignore[union-attr]
                for e in entries
            )
        )

    def _pack(self, rows: tuple[Row, ...]) -> None:
        self._len = len(rows)
        self._packed = zlib.compress(marshal.dumps(rows, 2), 1) if rows else b""

    @property
    def _rows(self) -> tuple[Row, ...]:
        if not self._packed:
            return ()
        rows: tuple[Row, ...] = marshal.loads(zlib.decompress(self._packed))
        return rows

    @classmethod
    def of_rows(cls, rows: Iterable[Row]) -> Transcript:
        """From (at, kind, text) tuples, as exporter.smtp.wire records them; not checked."""
        t = cls.__new__(cls)
        t._pack(tuple(rows))
        return t

    @staticmethod
    def _entry(row: Row) -> TranscriptEntry:
        return TranscriptEntry(round(row[0], 6), row[1], row[2])

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> TranscriptEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Transcript: ...

    def __getitem__(self, index: int | slice) -> TranscriptEntry | Transcript:
        if isinstance(index, slice):
            return Transcript.of_rows(self._rows[index])
        return self._entry(self._rows[index])

    def __iter__(self) -> Iterator[TranscriptEntry]:
        return map(self._entry, self._rows)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Transcript):
            return self._packed == other._packed or self._rows == other._rows
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._rows)

    def __repr__(self) -> str:
        return f"Transcript({list(self)!r})"

    def __reduce__(self) -> tuple[type[Transcript], tuple[tuple[Row, ...]]]:
        return (Transcript, (self._rows,))


EMPTY_TRANSCRIPT = Transcript()


@dataclass(frozen=True)
class ProbeResult:
    target: Target
    started_at: float  # unix seconds
    success: bool
    failure: Failure | None = None
    peer_address: str | None = None
    address_family: str | None = None  # "ipv4" or "ipv6"
    phases: Phases = field(default_factory=Phases)
    smtp: SmtpFacts = field(default_factory=SmtpFacts)
    tls: TlsFacts | None = None
    certificate: CertFacts | None = None  # the leaf
    chain: tuple[CertFacts, ...] = ()  # as served, leaf first
    # The served certificates as DER, leaf first, unreadable ones included: what DANE matches
    # (exporter.dane) needs, byte for byte.
    chain_der: tuple[bytes, ...] = ()
    verification: Verification | None = None
    transcript: Transcript = EMPTY_TRANSCRIPT
    # A target with all_addresses: one result per address probed (each with `peer_address` and
    # `address_family`); this result then sums them up (success only if every one succeeded).
    addresses: tuple[ProbeResult, ...] = ()
    # The DANE check of this chain, for a target with `dane` (the service and the commands add
    # it after the probe, which itself looks up no TLSA record). With all_addresses, on each
    # address's result.
    dane: DaneResult | None = None

    @property
    def chain_earliest_not_after(self) -> float | None:
        return min((c.not_after for c in self.chain), default=None)


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split `host:port`, `[v6]:port`, or a bare host (with `default_port`). Raises ValueError."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ValueError(f"{text!r}: no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r}: no port")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: {port_text!r} is not a port")
    return host, int(port_text)
