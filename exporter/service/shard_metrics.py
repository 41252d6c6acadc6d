"""The exporter's shard: which part of the config it probes (`--shard.index`, `--shard.count`).

One of the exporter's own collectors, rendered at every scrape after the cached per-target
families (exposition.py). `smtp_tls_exporter_targets` and
`smtp_tls_exporter_domains` count what this replica probes; these say how much the whole config
holds, so that `sum(smtp_tls_exporter_targets)` over the replicas can be checked against it:

    smtp_tls_exporter_shard_index 1.0
    smtp_tls_exporter_shard_count 3.0
    smtp_tls_exporter_config_targets 10.0
    smtp_tls_exporter_config_domains 3.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import Config
from exporter.shard import Shard


class ShardCollector(Collector):
    def __init__(self, shard: Shard, config: Callable[[], Config]) -> None:
        """`config`: the whole config in use (every shard's targets), read at each scrape."""
        self._shard = shard
        self._config = config

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        config = self._config()
        yield GaugeMetricFamily(
            "smtp_tls_exporter_shard_index",
            "This exporter's shard (--shard.index): it probes the targets and mail domains "
            "whose name's Prometheus hashmod by the shard count is this number.",
            value=self._shard.index,
        )
        yield GaugeMetricFamily(
            "smtp_tls_exporter_shard_count",
            "The number of shards the config is split into (--shard.count); 1 when not sharded.",
            value=self._shard.count,
        )
        yield GaugeMetricFamily(
            "smtp_tls_exporter_config_targets",
            "Targets in the config, every shard's; smtp_tls_exporter_targets is this shard's.",
            value=len(config.targets),
        )
        yield GaugeMetricFamily(
            "smtp_tls_exporter_config_domains",
            "Mail domains in the config, every shard's; smtp_tls_exporter_domains is this shard's.",
            value=len(config.domains),
        )
