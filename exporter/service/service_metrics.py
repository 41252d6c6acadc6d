"""The exporter's own reliability metrics: back-off per endpoint, web config reloads, tasks.

One of the exporter's own collectors, rendered at every scrape after the cached per-target
families (exposition.py); it reads plain data (under the owners' locks) and never waits on a
probe:

    smtp_tls_exporter_endpoints_backing_off 1.0
    smtp_tls_exporter_backoff_seconds{host="mx.example.com",port="25"} 240.0
    smtp_tls_exporter_web_config_last_reload_successful 1.0
    smtp_tls_exporter_tasks 12.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.service.manners import Manners
from exporter.web.guard import WebGuard


class ServiceCollector(Collector):
    def __init__(self, manners: Manners, tasks: Callable[[], int | None]) -> None:
        """`tasks`: the number of asyncio tasks alive, None before the loop runs."""
        self._manners = manners
        self._tasks = tasks
        self.web: WebGuard | None = None  # set when --web.config.file is given

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        backing_off = self._manners.backing_off()
        yield GaugeMetricFamily(
            "smtp_tls_exporter_endpoints_backing_off",
            "Endpoints (host and port) whose next probe is held back because the server pushed "
            "the prober away (a rejected greeting such as 421, or a dropped connection).",
            value=len(backing_off),
        )
        seconds = GaugeMetricFamily(
            "smtp_tls_exporter_backoff_seconds",
            "Length of the current back-off of an endpoint, in seconds; present while it lasts.",
            labels=["host", "port"],
        )
        for b in backing_off:
            seconds.add_metric([b.host, str(b.port)], b.seconds)
        yield seconds
        if self.web is not None:
            yield GaugeMetricFamily(
                "smtp_tls_exporter_web_config_last_reload_successful",
                "1 if the web config file (--web.config.file) last loaded without error, 0 if a "
                "change to it was refused (the previous web config stays in force).",
                value=int(self.web.reload_success),
            )
        tasks = self._tasks()
        if tasks is not None:
            yield GaugeMetricFamily(
                "smtp_tls_exporter_tasks",
                "Asyncio tasks alive in the exporter: one per target and mail domain, plus "
                "probes and reloads in flight.",
                value=tasks,
            )
