"""What the sample builders write into: a family by name, each taking samples through `put`.

The collector passes prometheus_client metric families (`Family`); the cached exposition
(exposition.py) passes lighter sinks of its own, which write each sample's line of text at once.
A sample's labels come in two parts: `base`, the labels shared by the many series of one endpoint
or domain (passed as the same object to each), then `extra`, the sample's own; their names never
overlap (config.RESERVED_LABELS keeps static labels off the names the exporter sets).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.samples import Sample

Labels = Mapping[str, str]
NO_LABELS: Labels = {}  # shared, never changed


class Sink(Protocol):
    def put(self, base: Labels, extra: Labels, value: float) -> None: ...


Families = Mapping[str, Sink]


class Family(GaugeMetricFamily):
    """A gauge family whose samples may each carry their own label names."""

    def put(self, base: Labels, extra: Labels, value: float) -> None:
        # Static labels differ between targets, so samples are added with their own label set
        # rather than through add_metric(), which fixes one set of names per family.
        self.samples.append(Sample(self.name, {**base, **extra}, float(value)))
