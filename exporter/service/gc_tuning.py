"""Garbage-collector settings for the service: few and short pauses with many targets.

CPython frees most objects by reference counting; its cyclic collector finds the rest by walking
the container objects it tracks, with everything else stopped (probes and scrapes alike). A full
collection (generation 2) walks every long-lived one: the imported modules' functions and
classes, the config's targets, each target's latest result. With default settings one starts
whenever the objects promoted since the last one reach a quarter of the long-lived ones; at
10,000 targets, whose results are replaced every interval, that was every few seconds, each
stopping the exporter for 0.2 to 0.9 s (docs/performance.md).

`tune()`, at start-up once the service has started and before the first probe:

- `gc.freeze()`: every object alive then (the modules, the config, the scheduler's entry for
  each target) moves to the permanent generation, which no collection walks again. Reference
  counting still frees them when they go (a config replaced by a reload); only garbage cycles
  among them would stay, and at start-up nothing is under way that could leave some. Not
  repeated after a reload: probes in flight then would be frozen too, and the cycles some leave
  behind when they end never freed.
- thresholds THRESHOLDS instead of (700, 10, 10): a full collection waits for 100 collections
  of the middle generation instead of 10 (and still for the quarter above): at 10,000 targets
  about every 90 s instead of every few seconds. The young generations keep their defaults: a
  larger first threshold made each young collection walk more (results replaced by new ones
  leave its count unchanged but its list longer), up to 0.3 s. What waits longer for a full
  collection is the garbage in cycles that reached the old generation, a few hundred objects a
  second under load: a few MB at most.
"""

from __future__ import annotations

import gc

THRESHOLDS = (700, 10, 100)


def tune() -> None:
    """Freeze what start-up built and raise the collection thresholds (see the module)."""
    gc.collect()  # start-up's own garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
