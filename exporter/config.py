"""The config file: YAML in, a frozen validated Config out, or every problem with its key path."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from exporter.checks.config import check_target_checks, read_checks, read_flag
from exporter.dane.config import DaneConfig, read_dane, read_target_dane
from exporter.domains.config import DnsConfig, DomainConfig, read_dns, read_domains
from exporter.model import Checks, Mode, Target, VerifyPolicy, parse_host_port
from exporter.tls.verify import TrustStoreError, load_trust_store

DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONCURRENCY = 50
DEFAULT_HOST_CONCURRENCY = 2  # connections to one mail host at once (exporter.service.manners)

# Label names the exporter sets itself; a static label with one of these names would clash.
RESERVED_LABELS = frozenset(
    {
        *("target", "host", "port", "mode"),  # on every per-endpoint series
        *("domain", "mx_preference"),  # on a mail domain's series and its MX probes' series
        *("mx", "id", "status"),  # smtp_tls_mta_sts_mx_*, ..._policy_id_info, ..._mx_lookup_info
        *("stage", "reason", "phase", "version", "cipher"),  # on one metric each
        *("subject", "issuer", "serial", "fingerprint_sha256"),  # smtp_tls_cert_info
        *("key_type", "key_bits", "signature_algorithm"),
        *("result", "python_version"),  # the exporter's own metrics
        *("address", "ip_family"),  # the probes of a target with all_addresses
        "check",  # smtp_tls_check_* (the opt-in checks)
    }
)
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DNS_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
_ADDRESS_LITERAL = re.compile(r"\[[^\s\[\]]+\]")  # EHLO [192.0.2.1] / [IPv6:2001:db8::1]
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile("".join(f"(?:{_NUMBER}{unit})?" for unit in _UNIT_SECONDS))  # in order, once

_E = TypeVar("_E", Mode, VerifyPolicy)

_TOP_KEYS = ("defaults", "dns", "dane", "targets", "domains", "probe_allowlist")
_DEFAULT_KEYS = (
    *("interval", "timeout", "ehlo_name", "ca_file", "verify", "concurrency"),
    "host_concurrency",
    *("all_addresses", "checks"),
)
_TARGET_KEYS = (
    *("name", "host", "port", "mode", "server_name", "verify", "ca_file"),
    *("interval", "timeout", "ehlo_name", "labels"),
    *("all_addresses", "checks"),
    *("dane", "dane_names"),
)


@dataclass(frozen=True)
class TargetDefaults:
    """The `defaults:` that a target not in the config (an allowlisted /probe host) gets."""

    timeout: float = DEFAULT_TIMEOUT
    ehlo_name: str | None = None
    ca_file: str | None = None
    verify: VerifyPolicy | None = None  # None: by port
    interval: float = DEFAULT_INTERVAL  # how long /probe answers from the last probe's result

    def target(self, host: str, port: int) -> Target:
        return Target.create(
            host,
            port,
            interval=self.interval,
            timeout=self.timeout,
            ehlo_name=self.ehlo_name,
            ca_file=self.ca_file,
            verify=self.verify,
        )


@dataclass(frozen=True)
class Config:
    targets: tuple[Target, ...]
    concurrency: int  # max probes in flight at once
    probe_allowlist: tuple[str, ...]  # hosts /probe may probe besides the configured targets'
    source: str  # the file's path, or "<string>"
    defaults: TargetDefaults = TargetDefaults()
    dns: DnsConfig = field(default_factory=DnsConfig)  # for every lookup the exporter makes
    domains: tuple[DomainConfig, ...] = ()  # mail domains (docs/domains.md)
    dane: DaneConfig = field(default_factory=DaneConfig)  # the TLSA lookups (docs/dane.md)
    host_concurrency: int = DEFAULT_HOST_CONCURRENCY  # probes connected to one host at once


class ConfigError(Exception):
    """An invalid config. `problems` holds one line per problem; str() joins them."""

    def __init__(self, problems: list[str], source: str = "<string>") -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.source = source


def read_text(path: str) -> str:
    """A config file's text. Raises ValueError with the message to show when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc.reason}") from exc


def load_config(path: str) -> Config:
    """Read and validate the config file at `path`. Relative `ca_file`s are relative to it."""
    try:
        text = read_text(path)
    except ValueError as exc:
        raise ConfigError([str(exc)], path) from exc
    return parse_config(text, path, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_config(text: str, source: str = "<string>", *, base_dir: str | None = None) -> Config:
    """Validate config text. `base_dir` anchors relative `ca_file`s (default: as given)."""
    try:
        data = yaml.load(text, Loader=_FastLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as fast:
        exc = fast
        # Again with the pure-Python parser, whose messages say more ("expected <block end>,
        # but found '<block sequence start>'" where libyaml says "did not find expected key").
        try:
            yaml.load(text, Loader=_StrictLoader)
        except yaml.YAMLError as slow:
            exc = slow
        raise ConfigError([_yaml_problem(exc)], source) from exc
    p = _Problems()
    config = _Reader(p, base_dir).config(data, source)
    if p.lines or config is None:
        raise ConfigError(p.lines or ["invalid config"], source)
    return config


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like "30s", "1m30s", "2h", "500ms".

    Units d, h, m, s, ms, largest first, each at most once. Raises ValueError (also for
    negative, infinite or NaN values); zero is a duration, whether it is allowed is the caller's.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, str):
        text = value.strip()
        units = _DURATION.fullmatch(text)
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        elif text and units:
            numbers = zip(units.groups(), _UNIT_SECONDS.values(), strict=True)
            seconds = sum(float(n) * size for n, size in numbers if n is not None)
        else:
            raise ValueError(f"{value!r} is not a duration")
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest string parse_duration reads back as `seconds`: 90 -> "1m30s", 0.5 -> "500ms"."""
    millis = round(seconds * 1000)
    if millis <= 0 or abs(millis / 1000 - seconds) > 1e-9:
        return f"{seconds:g}s"
    parts = []
    for unit in _UNIT_SECONDS:
        size = round(_UNIT_SECONDS[unit] * 1000)
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _show(value: object) -> str:
    """A value as the YAML author wrote it, for messages: "5x", 70000, true, null, a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # quoted, control characters escaped
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"{where}: {exc.problem}{context}"
    return f"YAML: {exc}"


class _NoDuplicateKeys:
    """safe_load, except that a key repeated in one mapping is an error, not "last one wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a merged key may be overridden, that is what merging is for
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_show(key)}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc,no-any-return]


class _StrictLoader(_NoDuplicateKeys, yaml.SafeLoader):
    pass


# The same on libyaml's parser when PyYAML has it (its wheels do): a config of 10,000 targets
# loads in a fifth of the time and with less memory (docs/performance.md).
_FastLoader: type[yaml.SafeLoader | yaml.CSafeLoader] = _StrictLoader
if hasattr(yaml, "CSafeLoader"):

    class _CStrictLoader(_NoDuplicateKeys, yaml.CSafeLoader):
        pass

    _FastLoader = _CStrictLoader


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}")


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


@dataclass
class _Defaults:
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    ehlo_name: str | None = None
    ca_file: str | None = None
    verify: VerifyPolicy | None = None  # None: by port
    concurrency: int = DEFAULT_CONCURRENCY
    host_concurrency: int = DEFAULT_HOST_CONCURRENCY
    all_addresses: bool = False
    checks: Checks = field(default_factory=Checks)
    given: set[str] = field(default_factory=set)


class _Reader:
    """Reads the loaded YAML; each method records its problems and returns None on one."""

    def __init__(self, problems: _Problems, base_dir: str | None) -> None:
        self.p = problems
        self.base_dir = base_dir

    def config(self, data: object, source: str) -> Config | None:
        if data is None:
            self.p.lines.append("the config is empty: it needs at least `targets:`")
            return None
        top = self.mapping(data, "", _TOP_KEYS)
        if top is None:
            return None
        defaults = self.defaults(top.get("defaults"))
        dns = read_dns(self, top.get("dns"))
        if "targets" not in top:
            self.p.add("targets", "missing (an empty list is allowed)")
        targets = self.targets(top.get("targets"), defaults)
        domains = read_domains(self, top.get("domains"), defaults)
        dane = read_dane(self, top)
        allowlist = self.allowlist(top.get("probe_allowlist"))
        target_defaults = TargetDefaults(
            defaults.timeout,
            defaults.ehlo_name,
            defaults.ca_file,
            defaults.verify,
            defaults.interval,
        )
        return Config(
            tuple(targets),
            defaults.concurrency,
            tuple(allowlist),
            source,
            target_defaults,
            dns,
            domains,
            dane,
            host_concurrency=defaults.host_concurrency,
        )

    # --- sections ---

    def defaults(self, data: object) -> _Defaults:
        d = _Defaults()
        section = self.mapping(data, "defaults", _DEFAULT_KEYS, null_ok=True) or {}
        d.given = {k for k in section if isinstance(k, str)}
        path = "defaults."
        bad = len(self.p.lines)
        if "interval" in section:
            d.interval = self.duration(section["interval"], path + "interval") or d.interval
        if "timeout" in section:
            d.timeout = self.duration(section["timeout"], path + "timeout") or d.timeout
        timing_given = {"interval", "timeout"} & d.given
        if timing_given and len(self.p.lines) == bad and d.timeout > d.interval:
            self.too_long(path, timing_given, d.timeout, d.interval)
        if "ehlo_name" in section:
            d.ehlo_name = self.ehlo_name(section["ehlo_name"], path + "ehlo_name")
        if "ca_file" in section:
            d.ca_file = self.ca_file(section["ca_file"], path + "ca_file")
        if "verify" in section:
            d.verify = self.choice(section["verify"], path + "verify", VerifyPolicy)
        for key in ("concurrency", "host_concurrency"):
            if key not in section:
                continue
            value = section[key]
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                setattr(d, key, value)
            else:
                self.p.add(path + key, f"{_show(value)} is not a positive integer")
        if "all_addresses" in section:
            d.all_addresses = bool(
                read_flag(self, section["all_addresses"], path + "all_addresses")
            )
        if "checks" in section:
            d.checks = read_checks(self, section["checks"], path + "checks", d.checks) or d.checks
        return d

    def targets(self, data: object, d: _Defaults) -> list[Target]:
        items = self.sequence(data, "targets")
        targets: list[Target] = []
        first_seen: dict[str, int] = {}
        for i, item in enumerate(items):
            path = f"targets[{i}]"
            target = self.target(item, path, d)
            if target is None:
                continue
            if target.name in first_seen:
                where = f"{path}.name" if isinstance(item, dict) else path
                also = f"targets[{first_seen[target.name]}]"
                self.p.add(where, f"duplicate name {_show(target.name)} (also {also})")
                continue
            first_seen[target.name] = i
            targets.append(target)
        return targets

    def target(self, item: object, path: str, d: _Defaults) -> Target | None:
        if isinstance(item, str):
            return self.shorthand(item, path, d)
        m = self.mapping(item, path, _TARGET_KEYS, expected="host:port or a mapping")
        if m is None:
            return None
        bad = len(self.p.lines)
        host = self.host(m["host"], path + ".host") if "host" in m else None
        port = self.port(m["port"], path + ".port") if "port" in m else None
        for key in ("host", "port"):
            if key not in m:
                self.p.add(f"{path}.{key}", "missing")
        name = self.name(m["name"], path + ".name") if "name" in m else None
        mode = self.choice(m["mode"], path + ".mode", Mode) if "mode" in m else None
        server_name = (
            self.host(m["server_name"], path + ".server_name") if "server_name" in m else None
        )
        verify = self.choice(m["verify"], path + ".verify", VerifyPolicy) if "verify" in m else None
        ca_file = self.ca_file(m["ca_file"], path + ".ca_file") if "ca_file" in m else d.ca_file
        ehlo = self.ehlo_name(m["ehlo_name"], path + ".ehlo_name") if "ehlo_name" in m else None
        interval = self.duration(m["interval"], path + ".interval") if "interval" in m else None
        timeout = self.duration(m["timeout"], path + ".timeout") if "timeout" in m else None
        labels = self.labels(m.get("labels"), path + ".labels")
        all_addresses = d.all_addresses
        if "all_addresses" in m:
            all_addresses = bool(read_flag(self, m["all_addresses"], path + ".all_addresses"))
        checks: Checks | None = d.checks
        if "checks" in m:
            checks = read_checks(self, m["checks"], path + ".checks", d.checks)
            check_target_checks(
                self, m["checks"], path + ".checks", mode or Mode.for_port(port or 0)
            )
        dane, dane_names = read_target_dane(self, m, path, host, port, mode)
        given = {k for k in ("interval", "timeout") if k in m}
        parsed = (interval is not None or "interval" not in m) and (
            timeout is not None or "timeout" not in m
        )
        interval = d.interval if interval is None else interval
        timeout = d.timeout if timeout is None else timeout
        if given and parsed and timeout > interval:  # with neither given, `defaults` was checked
            self.too_long(path + ".", given, timeout, interval)
        if len(self.p.lines) > bad or host is None or port is None or checks is None:
            return None
        return Target.create(
            host,
            port,
            name=name,
            mode=mode,
            verify=verify or d.verify,
            server_name=server_name,
            ehlo_name=ehlo or d.ehlo_name,
            ca_file=ca_file,
            timeout=timeout,
            interval=interval,
            labels=labels,
            all_addresses=all_addresses,
            checks=checks,
            dane=dane,
            dane_names=dane_names,
        )

    def shorthand(self, text: str, path: str, d: _Defaults) -> Target | None:
        try:
            host, port = parse_host_port(text)
        except ValueError as exc:
            # parse_host_port says "'<text>': <why>"; keep the why.
            why = str(exc).split(": ", 1)[-1]
            self.p.add(path, f"{_show(text)} is not host:port ({why})")
            return None
        if not _is_host(host):
            self.p.add(path, f"{_show(host)} is not a host name or IP address")
            return None
        return Target.create(
            host,
            port,
            verify=d.verify,
            ehlo_name=d.ehlo_name,
            ca_file=d.ca_file,
            timeout=d.timeout,
            interval=d.interval,
            all_addresses=d.all_addresses,
            checks=d.checks,
        )

    def allowlist(self, data: object) -> list[str]:
        hosts = []
        for i, item in enumerate(self.sequence(data, "probe_allowlist")):
            host = self.host(item, f"probe_allowlist[{i}]")
            if host is not None:
                hosts.append(host)
        return hosts

    def labels(self, data: object, path: str) -> dict[str, str]:
        m = self.mapping(data, path, None, null_ok=True) or {}
        labels = {}
        for key, value in m.items():
            where = _join(path, key)
            if not isinstance(key, str) or not _LABEL_NAME.fullmatch(key):
                self.p.add(where, "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            elif key.startswith("__"):
                self.p.add(where, "label names starting with __ are reserved by Prometheus")
            elif key in RESERVED_LABELS:
                self.p.add(where, "reserved: the exporter sets this label itself")
            elif not isinstance(value, str):
                self.p.add(where, f"{_show(value)} is not a string (quote it)")
            elif not value:
                self.p.add(where, "empty (Prometheus treats an empty label as no label)")
            else:
                labels[key] = value
        return labels

    # --- values ---

    @staticmethod
    def show(value: object) -> str:
        return _show(value)

    @staticmethod
    def show_duration(seconds: float) -> str:
        return format_duration(seconds)

    def mapping(
        self,
        data: object,
        path: str,
        allowed: tuple[str, ...] | None,
        *,
        null_ok: bool = False,
        expected: str = "a mapping",
    ) -> dict[Any, Any] | None:
        if data is None and null_ok:  # `defaults:` with every option commented out
            return {}
        if not isinstance(data, dict):
            if path:
                self.p.add(path, f"expected {expected}, got {_show(data)}")
            else:
                self.p.lines.append(f"the config must be a mapping, got {_show(data)}")
            return None
        if allowed is not None:
            for key in data:
                if key not in allowed:
                    self.p.add(_join(path, key), "unknown key")
        return data

    def sequence(self, data: object, path: str) -> list[Any]:
        if data is None:  # absent, or every entry commented out
            return []
        if not isinstance(data, list):
            self.p.add(path, f"expected a list, got {_show(data)}")
            return []
        return data

    def duration(self, value: object, path: str) -> float | None:
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.p.add(path, f"{_show(value)} is not a duration")
            return None
        if seconds <= 0:
            self.p.add(path, f"{_show(value)} is not a positive duration")
            return None
        return seconds

    def too_long(self, prefix: str, given: set[str], timeout: float, interval: float) -> None:
        t, i = format_duration(timeout), format_duration(interval)
        if "timeout" in given:
            self.p.add(prefix + "timeout", f"{t} is longer than the interval ({i})")
        else:
            self.p.add(prefix + "interval", f"{i} is shorter than the timeout ({t})")

    def port(self, value: object, path: str) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
            return value
        self.p.add(path, f"{_show(value)} is not a port")
        return None

    def host(self, value: object, path: str) -> str | None:
        if isinstance(value, str) and _is_host(value):
            return value
        self.p.add(path, f"{_show(value)} is not a host name or IP address")
        return None

    def name(self, value: object, path: str) -> str | None:
        if isinstance(value, str) and value.strip() and value.isprintable():
            return value
        self.p.add(path, f"{_show(value)} is not a name (a non-empty printable string)")
        return None

    def ehlo_name(self, value: object, path: str) -> str | None:
        # Sent verbatim after EHLO: anything but a domain or an address literal could inject
        # commands (CR LF) or be rejected (RFC 5321 section 4.1.1.1).
        if isinstance(value, str) and (
            _DNS_NAME.fullmatch(value) or _ADDRESS_LITERAL.fullmatch(value)
        ):
            return value
        self.p.add(path, f"{_show(value)} is not a domain or an address literal like [192.0.2.1]")
        return None

    def ca_file(self, value: object, path: str) -> str | None:
        if not isinstance(value, str) or not value:
            self.p.add(path, f"{_show(value)} is not a file path")
            return None
        full = os.path.join(self.base_dir, value) if self.base_dir else value
        try:
            load_trust_store(full)
        except TrustStoreError as exc:
            self.p.add(path, str(exc))
            return None
        return full

    def choice(self, value: object, path: str, enum: type[_E]) -> _E | None:
        if isinstance(value, str):
            try:
                return enum(value)
            except ValueError:
                pass
        choices = ", ".join(m.value for m in enum)
        self.p.add(path, f"{_show(value)} is not one of {choices}")
        return None


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _DNS_NAME.fullmatch(text) is not None
    return True
