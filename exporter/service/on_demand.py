"""What `/probe` may probe (configured targets and permitted hosts only) and what it answers."""

from __future__ import annotations

from http import HTTPStatus

from prometheus_client.registry import CollectorRegistry

from exporter.config import Config
from exporter.model import ProbeResult, Target, parse_host_port
from exporter.service.collector import SmtpTlsCollector
from exporter.service.http import ProbeRefused
from exporter.service.state import Snapshot


def choose_target(config: Config, spec: str) -> Target:
    """The target `/probe?target=spec` may probe: a configured one, or a permitted host.

    A name matches a configured target's name. Otherwise `spec` must be host:port whose
    host (compared as written: nothing is resolved to decide) is a configured target's host
    or is in `probe_allowlist`; anything else is refused, so that the exporter cannot be
    made to probe arbitrary hosts. A new port of a configured host inherits that target's
    server name, CA file, EHLO name and timeout.
    """
    for t in config.targets:
        if t.name == spec:
            return t
    try:
        host, port = parse_host_port(spec)
    except ValueError:
        raise ProbeRefused(
            HTTPStatus.NOT_FOUND,
            f"no configured target named {spec!r} (and it is not host:port)",
        ) from None
    key = _host_key(host)
    same_host = [t for t in config.targets if _host_key(t.host) == key]
    for t in same_host:
        if t.port == port:
            return t
    if same_host:
        t = same_host[0]
        return Target.create(
            host,
            port,
            server_name=t.server_name,
            ca_file=t.ca_file,
            ehlo_name=t.ehlo_name,
            timeout=t.timeout,
        )
    if key in {_host_key(h) for h in config.probe_allowlist}:
        return config.defaults.target(host, port)
    raise ProbeRefused(
        HTTPStatus.FORBIDDEN,
        f"{host} is neither a configured target's host nor in probe_allowlist; "
        "this exporter probes only hosts its config names",
    )


def on_demand_registry(result: ProbeResult) -> CollectorRegistry:
    """A registry whose exposition is this one probe's endpoint families, nothing else."""
    snap = Snapshot(
        targets=(result.target,),
        results={result.target.name: result},
        probes_total={},
        reload_success=True,
        reload_success_timestamp=None,
        scheduler_lag_seconds=0.0,
        scheduler_lag_max_seconds=0.0,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SmtpTlsCollector(lambda: snap, on_demand=True))
    return registry


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()
