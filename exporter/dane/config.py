"""The config file's `dane:` section and the `dane` keys of targets (docs/dane.md).

`exporter.config` owns the file and its reader; the functions here read these keys with that
reader's value checks, so every problem is reported with its key path like the rest. A domain's
`dane` key is read with the domain (exporter.domains.config).

DANE trusts the AD bit of the resolver's answer, so the name servers must be a validating
resolver the exporter trusts: `dane.nameservers` is required as soon as a target or a domain
enables DANE, and there is no fallback to the system's resolver.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.checks.config import read_flag
from exporter.domains.check import is_domain_name, normalize_domain
from exporter.domains.config import nameserver
from exporter.model import Mode

if TYPE_CHECKING:
    from exporter.config import _Reader

DEFAULT_DANE_TIMEOUT = 5.0
DANE_KEYS = ("nameservers", "timeout", "cd_retry")
DANE_PORT = 25  # RFC 7672: DANE for SMTP is about MX hosts, reached on port 25


@dataclass(frozen=True)
class DaneConfig:
    """The validating resolver(s) every DANE check asks for TLSA records."""

    nameservers: tuple[tuple[str, int], ...] = ()  # (IP, port); none: DANE is not configured
    timeout: float = DEFAULT_DANE_TIMEOUT  # seconds for one lookup, within the probe's timeout
    cd_retry: bool = True  # after a SERVFAIL, ask again with CD to tell `bogus` (docs/dane.md)


def read_dane(r: _Reader, top: dict[Any, Any]) -> DaneConfig:
    """The `dane:` section of the config's top mapping `top`; `dane.nameservers` is required
    when a target or a domain sets `dane: true`."""
    data = top.get("dane")
    section = r.mapping(data, "dane", DANE_KEYS, null_ok=True) or {}
    timeout = DEFAULT_DANE_TIMEOUT
    if "timeout" in section:
        timeout = r.duration(section["timeout"], "dane.timeout") or timeout
    cd_retry = True
    if "cd_retry" in section:
        cd_retry = read_flag(r, section["cd_retry"], "dane.cd_retry") is not False
    bad = len(r.p.lines)
    servers: list[tuple[str, int]] = []
    first_seen: dict[tuple[str, int], int] = {}
    for i, item in enumerate(r.sequence(section.get("nameservers"), "dane.nameservers")):
        path = f"dane.nameservers[{i}]"
        server = nameserver(r, item, path)
        if server is None:
            continue
        if server in first_seen:
            r.p.add(path, f"listed twice (also dane.nameservers[{first_seen[server]}])")
            continue
        first_seen[server] = i
        servers.append(server)
    enabled = _enabled_at(top)
    if enabled and not servers and len(r.p.lines) == bad and isinstance(data, dict | None):
        what = "missing" if "nameservers" not in section else "empty"
        r.p.add(
            "dane.nameservers",
            f"{what}: {', '.join(enabled)} need a DNSSEC-validating resolver for their TLSA "
            "lookups (the system's resolver is not used: its AD bit cannot be trusted)",
        )
    return DaneConfig(tuple(servers), timeout, cd_retry)


def _enabled_at(top: dict[Any, Any]) -> list[str]:
    """Key paths of the targets and domains that set `dane: true`."""
    found = []
    for section in ("targets", "domains"):
        items = top.get(section)
        if isinstance(items, list):
            found += [
                f"{section}[{i}].dane"
                for i, item in enumerate(items)
                if isinstance(item, dict) and item.get("dane") is True
            ]
    return found


def read_target_dane(
    r: _Reader, m: dict[Any, Any], path: str, host: str | None, port: int | None, mode: Mode | None
) -> tuple[bool, tuple[str, ...]]:
    """A target's `dane` and `dane_names`: only on port 25 with STARTTLS, for a host name."""
    dane = False
    if "dane" in m:
        dane = read_flag(r, m["dane"], path + ".dane") is True
    names: list[str] = []
    if "dane_names" in m:
        for i, item in enumerate(r.sequence(m["dane_names"], path + ".dane_names")):
            name = normalize_domain(item) if isinstance(item, str) else ""
            if is_domain_name(name):
                names.append(name)
            else:
                r.p.add(f"{path}.dane_names[{i}]", f"{r.show(item)} is not a domain name")
        if m.get("dane", False) is False:
            r.p.add(path + ".dane_names", "only with dane: true")
    if dane:
        where = path + ".dane"
        if port is not None and port != DANE_PORT:
            r.p.add(where, f"only for port 25 (DANE for SMTP, RFC 7672), not {port}")
        elif (mode or Mode.for_port(port or DANE_PORT)) is not Mode.STARTTLS:
            r.p.add(where, "only for mode starttls: MX hosts upgrade with STARTTLS on port 25")
        if host is not None and _is_ip(host):
            r.p.add(where, f"needs a host name: TLSA records are looked up at _25._tcp.{host}")
    return dane, tuple(dict.fromkeys(names))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
