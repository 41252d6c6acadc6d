"""Pure MTA-STS parsing (RFC 8461): the `_mta-sts` TXT record, the policy file, MX patterns.

Every function here takes text and returns data or raises CheckError with a reason from the closed
list; no other exception escapes, whatever the input (a hypothesis test holds us to that).

Where the RFC's ABNF and common practice part, the choice is written where it is made: the
checks are as strict as the ABNF, except for harmless leniency that no sender is known to refuse
(whitespace at the end of a TXT record, blank lines in a policy).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from exporter.domains.model import (
    CheckError,
    CheckReason,
    InvalidPattern,
    Policy,
    StsMode,
    StsRecord,
)

STS_VERSION = "v=STSv1"
MAX_AGE_LIMIT = 31557600  # RFC 8461 section 3.2: about one year
_WSP = " \t"

# RFC 8461 section 3.1: sts-field-delim = *WSP %x3B *WSP
_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
# sts-ext-name and sts-policy-ext-name: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# sts-ext-value: 1*(%x21-3A / %x3C / %x3E-7E), printable ASCII but "=", ";" and space
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
# RFC 5321 Domain: sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str]
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def begins_with(text: str, version: str) -> bool:
    """Whether a TXT record declares `version` (v=STSv1, v=TLSRPTv1): the version, then `;`,
    whitespace or the end. RFC 8461 section 3.1 says records not beginning "v=STSv1;" are
    discarded; the ABNF allows whitespace before the `;`, so that counts too."""
    if not text.startswith(version):
        return False
    rest = text[len(version) :]
    return not rest or rest[0] in ";" + _WSP


def split_fields(text: str, version: str) -> list[tuple[str, str]]:
    """The `name=value` fields after the version of a `;`-separated record, or CheckError.

    Shared by MTA-STS (RFC 8461 3.1) and TLS-RPT (RFC 8460 3): version, then at least one field,
    each after a delimiter of `;` with optional whitespace, and an optional final `;`."""
    body = text.rstrip(_WSP)  # trailing whitespace: not in the ABNF, harmless, tolerated
    parts = _FIELD_DELIM.split(body)
    if parts[0] != version:
        if begins_with(parts[0], version):
            raise CheckError(CheckReason.BAD_RECORD, f"no `;` after {version}")
        raise CheckError(CheckReason.BAD_RECORD, f"does not start with {version}")
    fields = parts[1:]
    if fields and fields[-1] == "":
        fields.pop()  # the optional final delimiter
    if not fields:
        raise CheckError(CheckReason.BAD_RECORD, f"no field after {version}")
    out: list[tuple[str, str]] = []
    for field in fields:
        name, eq, value = field.partition("=")
        if not field:
            raise CheckError(CheckReason.BAD_RECORD, "empty field (two `;` in a row)")
        if not eq:
            raise CheckError(CheckReason.BAD_RECORD, f"field {field!r} is not name=value")
        if not EXT_NAME.fullmatch(name):
            raise CheckError(CheckReason.BAD_RECORD, f"{name!r} is not a field name")
        out.append((name, value))
    return out


def parse_sts_record(text: str) -> StsRecord:
    """One `_mta-sts` TXT record (its strings already joined), or CheckError(bad_record)."""
    fields = split_fields(text, STS_VERSION)
    ids = [value for name, value in fields if name == "id"]  # names are case-sensitive (%s)
    if not ids:
        raise CheckError(CheckReason.BAD_RECORD, "no id field")
    if len(ids) > 1:
        raise CheckError(CheckReason.BAD_RECORD, "more than one id field")
    if not _ID.fullmatch(ids[0]):
        raise CheckError(CheckReason.BAD_RECORD, f"id {ids[0]!r} is not 1 to 32 letters and digits")
    extensions = []
    for name, value in fields:
        if name == "id":
            continue
        if not _EXT_VALUE.fullmatch(value):
            raise CheckError(CheckReason.BAD_RECORD, f"field {name}: value {value!r} not allowed")
        extensions.append((name, value))
    return StsRecord(id=ids[0], text=text, extensions=tuple(extensions))


def select_sts_record(texts: Sequence[str]) -> StsRecord:
    """The domain's record among every TXT string at `_mta-sts.DOMAIN` (RFC 8461 section 3.1):
    others are discarded; none is no_record, more than one is multiple_records."""
    candidates = [t for t in texts if begins_with(t, STS_VERSION)]
    if not candidates:
        ignored = f" ({len(texts)} other TXT record(s) ignored)" if texts else ""
        raise CheckError(CheckReason.NO_RECORD, f"no TXT record starts with {STS_VERSION}{ignored}")
    if len(candidates) > 1:
        raise CheckError(
            CheckReason.MULTIPLE_RECORDS,
            f"{len(candidates)} TXT records start with {STS_VERSION}; senders use none",
        )
    return parse_sts_record(candidates[0])


def parse_policy(text: str) -> Policy:
    """The policy file's text, or CheckError(parse_error) (RFC 8461 section 3.2).

    Lines end in CRLF or LF; each is `key:` then optional whitespace and the value. Unknown keys
    are ignored; `version`, `mode` and `max_age` must appear exactly once, `mx` at least once
    unless the mode is none. `mx` values that are IP literals or not host names are kept aside
    in `invalid_mx`: senders skip them, and a policy whose every `mx` is invalid has none."""
    single: dict[str, str] = {}
    patterns: list[str] = []
    extensions: list[tuple[str, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip(_WSP):
            continue  # blank lines: not in the ABNF, but harmless and common at the end
        key, colon, value = line.partition(":")
        if not colon:
            raise CheckError(CheckReason.PARSE_ERROR, f"line {number}: no `key:` in {line!r}")
        if not EXT_NAME.fullmatch(key):
            raise CheckError(CheckReason.PARSE_ERROR, f"line {number}: {key!r} is not a key")
        value = value.strip(_WSP)
        if key == "mx":
            patterns.append(value)
        elif key in ("version", "mode", "max_age"):
            if key in single:
                raise CheckError(CheckReason.PARSE_ERROR, f"line {number}: {key} given twice")
            single[key] = value
        else:
            extensions.append((key, value))
    for key in ("version", "mode", "max_age"):
        if key not in single:
            raise CheckError(CheckReason.PARSE_ERROR, f"no {key} field")
    if single["version"] != "STSv1":
        raise CheckError(CheckReason.PARSE_ERROR, f"version {single['version']!r} is not STSv1")
    try:
        mode = StsMode(single["mode"])  # case-sensitive, as the ABNF's %s strings
    except ValueError:
        raise CheckError(
            CheckReason.PARSE_ERROR,
            f"mode {single['mode']!r} is not enforce, testing or none",
        ) from None
    max_age = _max_age(single["max_age"])
    valid, invalid = _patterns(patterns)
    if mode is not StsMode.NONE and not valid:
        why = "no mx field" if not patterns else "no valid mx field (" + _reasons(invalid) + ")"
        raise CheckError(CheckReason.PARSE_ERROR, f"{why}, required in mode {mode}")
    return Policy(
        mode=mode,
        max_age=max_age,
        mx=tuple(valid),
        invalid_mx=tuple(invalid),
        extensions=tuple(extensions),
    )


def _max_age(value: str) -> int:
    if not _MAX_AGE.fullmatch(value):
        raise CheckError(CheckReason.PARSE_ERROR, f"max_age {value!r} is not 1 to 10 digits")
    seconds = int(value)
    if seconds > MAX_AGE_LIMIT:
        raise CheckError(
            CheckReason.PARSE_ERROR, f"max_age {seconds} is over the limit of {MAX_AGE_LIMIT}"
        )
    return seconds


def _patterns(values: Sequence[str]) -> tuple[list[str], list[InvalidPattern]]:
    valid: list[str] = []
    invalid: list[InvalidPattern] = []
    for value in values:
        why = pattern_problem(value)
        if why is None:
            normal = normalize(value)
            if normal not in valid:
                valid.append(normal)
        else:
            invalid.append(InvalidPattern(value, why))
    return valid, invalid


def _reasons(invalid: Sequence[InvalidPattern]) -> str:
    return "; ".join(f"{p.pattern!r}: {p.why}" for p in invalid)


def normalize(name: str) -> str:
    """A host name or pattern for comparison: lower case, no trailing dot (RFC 8461 4.1)."""
    return name.lower().removesuffix(".")


def pattern_problem(value: str) -> str | None:
    """Why an `mx` value is not a usable pattern, or None. Sts-policy-mx-value is
    ["*."] Domain (RFC 5321 Domain, A-labels); a trailing dot is tolerated."""
    if not value:
        return "empty"
    if _is_ip_literal(value):
        # Zuplu/postfix-tlspol #70: an IP in mx: made Postfix match the certificate against it.
        return "an IP address, not a host name"
    name = normalize(value)
    if name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253:
        return "not a host name"
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        if "*" in name:
            return "a wildcard must be the whole leftmost label (*.example.com)"
        return "not a host name (letters, digits and hyphens in dot-separated labels)"
    return None


def _is_ip_literal(value: str) -> bool:
    text = value.strip("[]")
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def mx_matches(pattern: str, host: str) -> bool:
    """Whether an MX host name matches one policy pattern (RFC 8461 section 4.1).

    Case-insensitive, trailing dots ignored; `*.example.com` matches exactly one leftmost label:
    `mx1.example.com`, not `example.com` nor `a.mx1.example.com`."""
    pattern, host = normalize(pattern), normalize(host)
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def policy_matches(policy: Policy, host: str) -> bool:
    """Whether an MX host matches any of the policy's valid patterns."""
    return any(mx_matches(pattern, host) for pattern in policy.mx)
