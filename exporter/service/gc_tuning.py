"""Garbage-collector settings for the service: few and short pauses with many targets.

CPython frees most objects by reference counting; its cyclic collector finds the rest by walking
the container objects it tracks, with everything else stopped (probes and scrapes alike). A full
collection (generation 2) walks every long-lived one: the imported modules' functions and
classes, the config's targets, each target's latest result. With default settings one starts
whenever the objects promoted since the last one reach a quarter of the long-lived ones; at
10,000 targets, whose results are replaced every interval, that was every few seconds, each
stopping the exporter for 0.4 to 0.8 s (docs/performance.md).

`tune()`, at start-up once the config is loaded and before the first probe:

- `gc.freeze()`: every object alive then (the modules, the config) moves to the permanent
  generation, which no collection walks again. Reference counting still frees them when they go
  (a config replaced by a reload); only garbage cycles among them would stay, and at start-up
  nothing is under way that could leave some. Not repeated after a reload: probes in flight
  then would be frozen too, and the cycles some leave behind when they end never freed.
- thresholds THRESHOLDS instead of (700, 10, 10): the youngest generation is collected once
  container allocations outnumber deallocations by 10,000 (a probe's short-lived coroutines,
  futures and TLS objects are mostly freed by then, not promoted to an older generation for a
  full collection to walk), and a full collection waits for 50 collections of the middle one
  (and still for the quarter above), so that it runs minutes apart rather than seconds.
"""

from __future__ import annotations

import gc

THRESHOLDS = (10_000, 10, 50)


def tune() -> None:
    """Freeze what start-up built and raise the collection thresholds (see the module)."""
    gc.collect()  # start-up's own garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
