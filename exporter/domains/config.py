"""The config file's `dns:` and `domains:` sections: DnsConfig and DomainConfig, and their reading.

`exporter.config` owns the file and its reader; the functions here read these two sections with
that reader's value checks, so every problem is reported with its key path like the rest.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from exporter.checks.config import mx_checks, read_flag
from exporter.domains.check import is_domain_name, normalize_domain
from exporter.model import Checks, parse_host_port

if TYPE_CHECKING:
    from exporter.config import _Defaults, _Reader

DEFAULT_DNS_TIMEOUT = 5.0
DEFAULT_DOMAIN_INTERVAL = 3600.0  # the policy check; RFC 8461 section 3.3 suggests daily at most
DNS_PORT = 53

DNS_KEYS = ("nameservers", "timeout")
DOMAIN_KEYS = (
    *("name", "interval", "probe_mx", "mx_interval"),
    *("timeout", "ca_file", "ehlo_name", "labels"),
    *("all_addresses", "checks"),
    "dane",
)
_NOT_A_DOMAIN = "is not a domain name (two or more labels of letters, digits and hyphens)"


@dataclass(frozen=True)
class DnsConfig:
    """Name servers for every lookup the exporter makes; none means the system's resolver."""

    nameservers: tuple[tuple[str, int], ...] = ()  # (IP, port)
    timeout: float = DEFAULT_DNS_TIMEOUT  # seconds for one lookup


@dataclass(frozen=True)
class DomainConfig:
    """One mail domain to check: its MTA-STS and TLS-RPT records and policy, and its MX hosts."""

    name: str  # lower case, without a trailing dot
    interval: float = DEFAULT_DOMAIN_INTERVAL  # seconds between policy checks (MX probed too)
    probe_mx: bool = True
    mx_interval: float = 60.0  # seconds between MX probes in between policy checks
    timeout: float = 10.0  # the policy fetch, and each MX probe
    ca_file: str | None = None  # None: the system trust store
    ehlo_name: str | None = None  # None: the machine's FQDN
    labels: tuple[tuple[str, str], ...] = ()  # static labels, sorted by name
    all_addresses: bool = False  # probe every address of each MX host
    checks: Checks = field(default_factory=Checks)  # for each MX host; never submission
    dane: bool = False  # DANE for each MX host (docs/dane.md), the domain as a reference name


def read_dns(r: _Reader, data: object) -> DnsConfig:
    section = r.mapping(data, "dns", DNS_KEYS, null_ok=True) or {}
    timeout = DEFAULT_DNS_TIMEOUT
    if "timeout" in section:
        timeout = r.duration(section["timeout"], "dns.timeout") or timeout
    servers: list[tuple[str, int]] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(r.sequence(section.get("nameservers"), "dns.nameservers")):
        path = f"dns.nameservers[{i}]"
        server = nameserver(r, item, path)
        if server is None:
            continue
        ip = server[0]
        if ip in first_seen:
            # One port per address: the resolver keys its ports by address.
            r.p.add(path, f"{ip} is listed twice (also dns.nameservers[{first_seen[ip]}])")
            continue
        first_seen[ip] = i
        servers.append(server)
    return DnsConfig(tuple(servers), timeout)


def nameserver(r: _Reader, value: object, path: str) -> tuple[str, int] | None:
    # An address, not a name: looking up the name server's name would need a name server.
    expected = "an IP address or IP:port ([IPv6]:port)"
    if not isinstance(value, str):
        r.p.add(path, f"expected {expected}, got {r.show(value)}")
        return None
    try:
        host, port = parse_host_port(value, default_port=DNS_PORT)
    except ValueError as exc:
        why = str(exc).split(": ", 1)[-1]
        r.p.add(path, f"{r.show(value)} is not {expected} ({why})")
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        r.p.add(path, f"{r.show(value)} is not {expected}")
        return None
    return str(ip), port


def read_domains(r: _Reader, data: object, d: _Defaults) -> tuple[DomainConfig, ...]:
    domains: list[DomainConfig] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(r.sequence(data, "domains")):
        path = f"domains[{i}]"
        domain = _domain(r, item, path, d)
        if domain is None:
            continue
        if domain.name in first_seen:
            where = f"{path}.name" if isinstance(item, dict) else path
            also = f"domains[{first_seen[domain.name]}]"
            r.p.add(where, f"duplicate domain {r.show(domain.name)} (also {also})")
            continue
        first_seen[domain.name] = i
        domains.append(domain)
    return tuple(domains)


def _domain(r: _Reader, item: object, path: str, d: _Defaults) -> DomainConfig | None:
    m: dict[Any, Any] | None
    if isinstance(item, str):
        m, name_path = {"name": item}, path
    else:
        m = r.mapping(item, path, DOMAIN_KEYS, expected="a domain name or a mapping")
        if m is None:
            return None
        name_path = path + ".name"
        if "name" not in m:
            r.p.add(name_path, "missing")
    bad = len(r.p.lines)
    name = _name(r, m["name"], name_path) if "name" in m else None
    seconds: dict[str, float | None] = {}
    for key in ("interval", "mx_interval", "timeout"):
        seconds[key] = r.duration(m[key], f"{path}.{key}") if key in m else None
    probe_mx = m.get("probe_mx", True)
    if not isinstance(probe_mx, bool):
        r.p.add(path + ".probe_mx", f"{r.show(probe_mx)} is not true or false")
    ca_file = r.ca_file(m["ca_file"], path + ".ca_file") if "ca_file" in m else d.ca_file
    ehlo = r.ehlo_name(m["ehlo_name"], path + ".ehlo_name") if "ehlo_name" in m else d.ehlo_name
    labels = r.labels(m.get("labels"), path + ".labels")
    all_addresses = d.all_addresses
    if "all_addresses" in m:
        all_addresses = bool(read_flag(r, m["all_addresses"], path + ".all_addresses"))
    inherited = replace(d.checks, submission_requires_tls=False)  # MX: port 25
    checks = mx_checks(r, m["checks"], path + ".checks", d.checks) if "checks" in m else inherited
    dane = "dane" in m and read_flag(r, m["dane"], path + ".dane") is True
    if dane and probe_mx is False:
        r.p.add(path + ".dane", "needs probe_mx: DANE checks the chain an MX probe is served")
    if len(r.p.lines) > bad or name is None or checks is None:
        return None
    interval = seconds["interval"] or DEFAULT_DOMAIN_INTERVAL
    mx_interval = seconds["mx_interval"] or d.interval
    timeout = seconds["timeout"] or d.timeout
    given = {k for k in seconds if k in m}
    _timing(r, path, "interval", given, timeout, interval)
    if probe_mx and {"timeout", "mx_interval"} & given:  # else defaults.interval was checked
        _timing(r, path, "mx_interval", given, timeout, mx_interval)
    if len(r.p.lines) > bad:
        return None
    return DomainConfig(
        name=name,
        interval=interval,
        probe_mx=bool(probe_mx),
        mx_interval=mx_interval,
        timeout=timeout,
        ca_file=ca_file,
        ehlo_name=ehlo,
        labels=tuple(sorted(labels.items())),
        all_addresses=all_addresses,
        checks=checks,
        dane=dane,
    )


def _name(r: _Reader, value: object, path: str) -> str | None:
    if isinstance(value, str):
        name = normalize_domain(value)
        if is_domain_name(name):
            return name
    r.p.add(path, f"{r.show(value)} {_NOT_A_DOMAIN}")
    return None


def _timing(
    r: _Reader, path: str, key: str, given: set[str], timeout: float, interval: float
) -> None:
    """The timeout (policy fetch, MX probe) must fit in the interval it repeats on."""
    if timeout <= interval:
        return
    t, i = r.show_duration(timeout), r.show_duration(interval)
    if "timeout" in given:
        r.p.add(f"{path}.timeout", f"{t} is longer than the {key} ({i})")
    else:
        r.p.add(f"{path}.{key}", f"{i} is shorter than the timeout ({t})")
