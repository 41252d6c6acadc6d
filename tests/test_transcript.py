"""model.Transcript: compact rows, read as TranscriptEntry, equal to the same entries."""

from __future__ import annotations

import dataclasses
import gc
import pickle

from exporter.model import Transcript, TranscriptEntry


def test_rows_read_as_entries_rounded_to_the_microsecond() -> None:
    t = Transcript.of_rows([(0.12345678, "C", "EHLO x"), (1.0, "S", "250 ok")])
    assert len(t) == 2 and bool(t)
    assert t[0] == TranscriptEntry(0.123457, "C", "EHLO x")
    assert [e.kind for e in t] == ["C", "S"]
    assert t[-1].text == "250 ok"
    assert t[1:] == (TranscriptEntry(1.0, "S", "250 ok"),)
    assert dataclasses.asdict(t[0]) == {"at": 0.123457, "kind": "C", "text": "EHLO x"}


def test_equal_to_any_sequence_of_the_same_entries() -> None:
    entries = [TranscriptEntry(0.5, "info", "a"), TranscriptEntry(1.5, "tls", "b")]
    t = Transcript(entries)
    assert t == tuple(entries) == Transcript(entries)
    assert t == entries
    assert t != entries[:1]
    assert t != "ab"
    assert Transcript() == () and not Transcript()
    assert hash(t) == hash(Transcript(entries))
    assert pickle.loads(pickle.dumps(t)) == t


def test_rows_are_not_tracked_by_the_garbage_collector() -> None:
    t = Transcript.of_rows([(0.1, "C", "EHLO x"), (0.2, "S", "250 ok")])
    gc.collect()  # exact tuples of atomic values are untracked by a collection
    assert not any(gc.is_tracked(row) for row in t._rows)
