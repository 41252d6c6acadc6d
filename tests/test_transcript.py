"""model.Transcript: compact rows, read as TranscriptEntry, equal to the same entries."""

from __future__ import annotations

import dataclasses
import gc
import pickle
import sys

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


def test_a_kept_transcript_holds_no_container_for_the_garbage_collector() -> None:
    rows = [(0.1, "C", "EHLO x"), (0.2, "S", "250 ok\n250 more")]
    t = Transcript.of_rows(rows)
    # What a kept transcript references: one bytes object and its length, nothing to walk.
    held = [o for o in gc.get_referents(t) if o is not Transcript]  # its class aside
    assert {type(o) for o in held} <= {bytes, int}
    assert not any(gc.is_tracked(o) for o in held)
    assert len(t) == 2 and t._rows == tuple(rows)  # exact: floats and text as recorded


def test_a_transcript_is_kept_smaller_than_its_rows() -> None:
    rows = [(i * 0.001, "S", f"250-mail.example.test line {i} " + "x" * 60) for i in range(12)]
    t = Transcript.of_rows(rows)
    as_tuples = sys.getsizeof(tuple(rows)) + sum(
        sys.getsizeof(r) + sys.getsizeof(r[0]) + sys.getsizeof(r[2]) for r in rows
    )
    assert sys.getsizeof(t._packed) * 3 < as_tuples
