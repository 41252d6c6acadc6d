"""What the sample builders write into: a family by name, of which only `samples` is used.

The collector passes prometheus_client's metric families; the cached exposition (exposition.py)
passes lighter sinks of its own, rendered to text once per result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from prometheus_client.samples import Sample


class HasSamples(Protocol):
    samples: list[Sample]


Families = Mapping[str, HasSamples]
