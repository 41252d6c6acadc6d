"""Pure TLS-RPT record parsing (RFC 8460 section 3): the `_smtp._tls` TXT record.

Takes text, returns a TlsRptRecord or raises CheckError (no_record, multiple_records,
bad_record); no other exception escapes, whatever the input.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

from exporter.domains.model import CheckError, CheckReason, TlsRptRecord
from exporter.domains.mta_sts import begins_with, split_fields

TLSRPT_VERSION = "v=TLSRPTv1"
# tlsrpt-rua = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
_URI_DELIM = re.compile(r"[ \t]*,[ \t]*")
_URI_CHARS = re.compile(r"[\x21-\x7e]+")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")


def parse_tlsrpt_record(text: str) -> TlsRptRecord:
    """One `_smtp._tls` TXT record (its strings already joined), or CheckError(bad_record)."""
    fields = split_fields(text, TLSRPT_VERSION)
    ruas = [value for name, value in fields if name == "rua"]
    if not ruas:
        raise CheckError(CheckReason.BAD_RECORD, "no rua field")
    if len(ruas) > 1:
        raise CheckError(CheckReason.BAD_RECORD, "more than one rua field")
    uris = tuple(_URI_DELIM.split(ruas[0]))
    for uri in uris:
        problem = uri_problem(uri)
        if problem is not None:
            raise CheckError(CheckReason.BAD_RECORD, f"rua {uri!r}: {problem}")
    extensions = []
    for name, value in fields:
        if name == "rua":
            continue
        if not _EXT_VALUE.fullmatch(value):
            raise CheckError(CheckReason.BAD_RECORD, f"field {name}: value {value!r} not allowed")
        extensions.append((name, value))
    return TlsRptRecord(rua=uris, text=text, extensions=tuple(extensions))


def uri_problem(uri: str) -> str | None:
    """Why a rua URI is not one a sender can report to, or None: RFC 8460 section 3 defines
    reporting by mail (mailto:) and by HTTPS POST (https:), nothing else."""
    if not uri:
        return "empty"
    if not _URI_CHARS.fullmatch(uri):
        return "not a URI (spaces or non-ASCII characters must be percent-encoded)"
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        return f"not a URI ({exc})"
    scheme = parts.scheme.lower()
    if scheme == "mailto":
        local, at, domain = urllib.parse.unquote(parts.path).rpartition("@")
        if not (local and at and domain):
            return "a mailto: URI needs an address (mailto:reports@example.com)"
        return None
    if scheme == "https":
        try:
            host = parts.hostname
        except ValueError as exc:
            return f"not a URI ({exc})"
        if not host:
            return "an https: URI needs a host"
        return None
    if not scheme:
        return "no scheme: use mailto: or https:"
    return f"scheme {parts.scheme}: is not mailto: or https:"


def select_tlsrpt_record(texts: Sequence[str]) -> TlsRptRecord:
    """The domain's record among every TXT string at `_smtp._tls.DOMAIN` (RFC 8460 section 3):
    records not starting with v=TLSRPTv1 are discarded; exactly one must remain."""
    candidates = [t for t in texts if begins_with(t, TLSRPT_VERSION)]
    if not candidates:
        ignored = f" ({len(texts)} other TXT record(s) ignored)" if texts else ""
        raise CheckError(
            CheckReason.NO_RECORD, f"no TXT record starts with {TLSRPT_VERSION}{ignored}"
        )
    if len(candidates) > 1:
        raise CheckError(
            CheckReason.MULTIPLE_RECORDS,
            f"{len(candidates)} TXT records start with {TLSRPT_VERSION}; senders use none",
        )
    return parse_tlsrpt_record(candidates[0])
