"""The config's `all_addresses` and `checks:` keys, for `defaults:`, each target and each domain.

`exporter.config` owns the file and its reader; these functions read the two keys with that
reader's value checks, so every problem is reported with its key path like the rest. A `checks:`
mapping is merged key by key over the one it inherits (`defaults.checks`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from exporter.model import Checks, Mode

if TYPE_CHECKING:
    from exporter.config import _Reader

_FLAGS = ("starttls_injection", "protocols", "submission_requires_tls")
CHECK_KEYS = (*_FLAGS, "interval")
_STARTTLS_ONLY = ("starttls_injection", "submission_requires_tls")


def read_flag(r: _Reader, value: object, path: str) -> bool | None:
    if isinstance(value, bool):
        return value
    r.p.add(path, f"{r.show(value)} is not true or false")
    return None


def read_checks(r: _Reader, data: object, path: str, inherited: Checks) -> Checks | None:
    """`inherited` with the keys of the `checks:` mapping at `path` applied; None on a problem."""
    section = r.mapping(data, path, CHECK_KEYS, null_ok=True)
    if section is None:
        return None
    bad = len(r.p.lines)
    flags: dict[str, bool] = {}
    for key in _FLAGS:
        if key in section:
            flag = read_flag(r, section[key], f"{path}.{key}")
            if flag is not None:
                flags[key] = flag
    interval: float | None = inherited.interval
    if "interval" in section:
        interval = r.duration(section["interval"], f"{path}.interval")
    if len(r.p.lines) > bad or interval is None:
        return None
    return Checks(
        starttls_injection=flags.get("starttls_injection", inherited.starttls_injection),
        protocols=flags.get("protocols", inherited.protocols),
        submission_requires_tls=flags.get(
            "submission_requires_tls", inherited.submission_requires_tls
        ),
        interval=interval,
    )


def check_target_checks(r: _Reader, data: object, path: str, mode: Mode) -> None:
    """A target's own `checks:` may not ask for a STARTTLS check on an implicit TLS port."""
    if mode is not Mode.IMPLICIT_TLS or not isinstance(data, dict):
        return
    for key in _STARTTLS_ONLY:
        if data.get(key) is True:
            r.p.add(f"{path}.{key}", "only for mode starttls: an implicit TLS port has no STARTTLS")


def mx_checks(r: _Reader, data: object, path: str, inherited: Checks) -> Checks | None:
    """A domain's `checks:`, for its MX probes: port 25, where TLS must stay optional."""
    if isinstance(data, dict) and "submission_requires_tls" in data:
        r.p.add(
            f"{path}.submission_requires_tls",
            "not for MX hosts: port 25 must accept mail without TLS (RFC 3207 section 4)",
        )
        return None
    checks = read_checks(r, data, path, inherited)
    return None if checks is None else dataclasses.replace(checks, submission_requires_tls=False)
