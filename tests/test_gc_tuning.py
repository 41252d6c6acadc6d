"""The service's garbage-collector settings (gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from exporter.service import gc_tuning


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_tune_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    built_at_start_up = [object()]
    assert gc.is_tracked(built_at_start_up)
    gc_tuning.tune()
    assert gc.get_threshold() == gc_tuning.THRESHOLDS
    assert gc.get_freeze_count() > 0
    # Frozen: in no generation any collection walks.
    assert not any(o is built_at_start_up for g in range(3) for o in gc.get_objects(generation=g))
    # What comes later is collected as usual.
    later: list[object] = []
    assert any(o is later for o in gc.get_objects(generation=0))
