"""The cached /metrics (exposition.py): the collector's series, rendered once per result."""

from __future__ import annotations

import dataclasses
import gc
import gzip
import math
import re
import threading
import zlib

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.model import Target
from exporter.service import exposition
from exporter.service.collector import SmtpTlsCollector
from exporter.service.exposition import CachedExposition, ExporterFamilies
from exporter.service.state import ServiceState
from tests.test_collector import (
    DAY,
    ENFORCED,
    NOW,
    RELAY,
    SUBMISSION,
    UNPROBED,
    Clock,
    add_domains,
    enforced,
    labels,
    make_state,
    refused,
    rich_state,
    starttls_ok,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TEXT_ACCEPT = "text/plain;version=0.0.4"
OPENMETRICS_TYPE = "application/openmetrics-text"
OM_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def cached(state: ServiceState, clock: Clock | None = None) -> CachedExposition:
    own = CollectorRegistry(auto_describe=False)
    own.register(ExporterFamilies(state.snapshot))
    return CachedExposition(state, own, clock=clock or Clock())


def body(exp: CachedExposition, accept: str = TEXT_ACCEPT, gz: bool = False) -> str:
    answer = exp.answer(accept, gz)
    raw = b"".join(answer.parts)
    assert len(raw) == answer.length
    return (gzip.decompress(raw) if gz else raw).decode()


def parsed(text: str, openmetrics: bool = False) -> Samples:
    families = parse_openmetrics(text) if openmetrics else parse_text(text)
    out: Samples = {}
    for family in families:
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"{key} twice"
            out[key] = s.value
    return out


def reference(state: ServiceState, clock: Clock) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SmtpTlsCollector(state.snapshot, clock=clock))
    return parsed(generate_latest(registry).decode())


def assert_same(got: Samples, want: Samples) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if key[0] == exposition.EXPIRY:  # written at build time from notAfter: rounding only
            assert math.isclose(got[key], value, rel_tol=0, abs_tol=1e-9), key
        else:
            assert got[key] == value or (math.isnan(value) and math.isnan(got[key])), key


@pytest.mark.parametrize(("accept", "gz"), [(TEXT_ACCEPT, False), (TEXT_ACCEPT, True)])
def test_same_series_as_the_collector(accept: str, gz: bool) -> None:
    state, clock = rich_state(), Clock()
    exp = cached(state, clock)
    assert_same(parsed(body(exp, accept, gz)), reference(state, clock))


_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _lines_by_family(text: str) -> dict[str, list[str]]:
    """Each family's lines as written (label pairs, escapes and value text untouched), the
    pairs of each line put in name order as prometheus_client writes them."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, labels = head.partition("{")
        pairs = _PAIR.findall(labels)
        assert ",".join(f'{k}="{v}"' for k, v in pairs) + "}" == labels if brace else not pairs
        ordered = ",".join(f'{k}="{v}"' for k, v in sorted(pairs))
        out.setdefault(name, []).append(f"{name}{{{ordered}}} {value}" if brace else line)
    return out


def test_lines_are_written_as_prometheus_client_writes_them() -> None:
    """Line for line, not only the same samples: escaping and value formatting too."""
    state, clock = rich_state(), Clock()
    odd = Target.create("localhost", 26, labels={"note": 'a "b" \\ c\nd é'})
    state.set_targets((*state.targets, odd))
    state.record(starttls_ok(odd), lag=0.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SmtpTlsCollector(state.snapshot, clock=clock))
    want = _lines_by_family(generate_latest(registry).decode())
    got = _lines_by_family(body(cached(state, clock)))
    assert set(got) == set(want)
    cached_names = set(exposition.FAMILIES) - {exposition.EXPIRY}
    assert len(cached_names & set(got)) >= 20  # the rich state fills most families
    for name in cached_names & set(got):
        assert sorted(got[name]) == sorted(want[name]), name


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        1.0,
        -1.0,
        0.25,
        1e-05,
        5e-324,
        0.1 + 0.2,
        123456.7,
        999999.0,
        1000000.0,
        1234567.0,
        1.763e9,
        1763251200.5,
        -1.763e9,
        1e22,
        2.0**70,
        math.inf,
        -math.inf,
        math.nan,
    ],
)
def test_values_are_formatted_as_prometheus_client_formats_them(value: float) -> None:
    from prometheus_client.utils import floatToGoString

    assert exposition._value(value) == floatToGoString(value)


def test_openmetrics_answer_is_valid_and_the_same() -> None:
    state, clock = rich_state(), Clock()
    exp = cached(state, clock)
    content_type = exp.answer(OM_ACCEPT, False).content_type
    assert content_type.startswith(OPENMETRICS_TYPE)
    text = body(exp, OM_ACCEPT, gz=True)
    assert text.endswith("# EOF\n")
    got = parsed(text, openmetrics=True)
    # OpenMetrics names a counter's sample with _total, as the text format does.
    assert_same(got, reference(state, clock))


def test_gzip_answer_is_one_valid_member_with_the_right_crc_and_size() -> None:
    exp = cached(rich_state())
    raw = b"".join(exp.answer(TEXT_ACCEPT, True).parts)
    plain = b"".join(exp.answer(TEXT_ACCEPT, False).parts)
    # zlib with wbits 16+15 reads exactly one gzip member and checks its CRC-32 and length.
    inflater = zlib.decompressobj(16 + 15)
    assert inflater.decompress(raw) == plain
    assert inflater.eof and inflater.unused_data == b""


def test_expiry_days_follow_the_clock_without_rendering_again() -> None:
    clock = Clock()
    state = make_state(starttls_ok())
    exp = cached(state, clock)
    key = (exposition.EXPIRY, _key(RELAY))
    assert parsed(body(exp))[key] == pytest.approx(60.0)
    renders = exp.renders
    clock.now = NOW + 10 * DAY
    exp.rebuild()  # the clock moved; no result did
    assert parsed(body(exp))[key] == pytest.approx(50.0)
    assert exp.renders == renders


def test_unchanged_results_are_never_rendered_again() -> None:
    """The regression test of the render path: scrapes with unchanged results render nothing."""
    state = rich_state()
    exp = cached(state)
    first = body(exp)
    renders = exp.renders
    assert renders == len(state.targets) + len(state.domains)
    for _ in range(5):
        assert body(exp) == first
        exp.rebuild()
    assert exp.renders == renders


def test_a_new_result_renders_its_target_once_when_recorded() -> None:
    state = make_state(starttls_ok(), refused(), targets=(RELAY, SUBMISSION, UNPROBED))
    exp = cached(state)
    exp.start()
    try:
        body(exp)
        renders = exp.renders
        state.record(starttls_ok(SUBMISSION), lag=0.0)  # on_record renders it, now
        assert exp.renders == renders + 1
        text = body(exp)  # the build reuses it
        assert exp.renders == renders + 1
        assert parsed(text)[("smtp_tls_probe_success", _key(SUBMISSION))] == 1.0
    finally:
        exp.stop()


def test_a_reload_that_keeps_a_target_does_not_render_it_again() -> None:
    state = make_state(starttls_ok(), refused())
    exp = cached(state)
    body(exp)
    renders = exp.renders
    # A new config with equal targets (new objects): the same series, nothing rendered.
    state.set_targets(tuple(dataclasses.replace(t) for t in state.targets))
    body(exp)
    assert exp.renders == renders


def test_removed_target_and_domain_vanish_and_are_forgotten() -> None:
    state = make_state(starttls_ok(), refused())
    add_domains(state, (ENFORCED, enforced()))
    exp = cached(state)
    assert ("smtp_tls_probe_success", _key(SUBMISSION)) in parsed(body(exp))
    state.set_targets((RELAY,))
    state.set_domains(())
    text = body(exp)
    assert ("smtp_tls_probe_success", _key(SUBMISSION)) not in parsed(text)
    assert "smtp_tls_mta_sts_mode" not in text
    assert_same(parsed(text), reference(state, Clock()))
    assert exp.renders == 3  # nothing rendered again for the removal


def test_new_checks_and_domain_results_are_shown() -> None:
    state = make_state(starttls_ok())
    exp = cached(state)
    body(exp)
    add_domains(state, (ENFORCED, enforced()))
    assert_same(parsed(body(exp)), reference(state, Clock()))


def test_a_costly_build_is_served_while_a_background_build_catches_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above SYNC_BUDGET a scrape never builds: it serves the latest build, and the builder
    thread brings it up to date."""
    monkeypatch.setattr(exposition, "SYNC_BUDGET", 0.0)
    monkeypatch.setattr(exposition, "MIN_REFRESH", 0.01)
    state = make_state(refused())
    exp = cached(state)
    key = ("smtp_tls_probe_success", _key(SUBMISSION))
    assert parsed(body(exp))[key] == 0.0  # the first build: at the scrape
    built = threading.Event()
    rebuild = exp.rebuild

    def counting() -> exposition.Build:
        try:
            return rebuild()
        finally:
            built.set()

    monkeypatch.setattr(exp, "rebuild", counting)
    state.record(starttls_ok(SUBMISSION), lag=0.0)
    assert parsed(body(exp))[key] == 0.0  # served from the previous build
    exp.start()
    try:
        assert built.wait(10), "the background builder did not run"
        assert parsed(body(exp))[key] == 1.0
    finally:
        exp.stop()


def _key(target: Target) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels(target).items()))


def test_a_plain_answer_is_inflated_a_piece_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = cached(rich_state())
    whole = body(exp)
    monkeypatch.setattr(exposition, "PLAIN_PIECE", 1000)
    answer = exp.answer(TEXT_ACCEPT, False)
    parts = list(answer.parts)
    assert len(parts) > 5 and max(len(p) for p in parts[:-1]) <= 1000
    assert b"".join(parts).decode() == whole and answer.length == len(whole.encode())


@pytest.mark.parametrize("group", [1, 5, 1000])
@pytest.mark.parametrize("buffer", [0, 300, 1 << 30])
@pytest.mark.parametrize("piece", [1, 1 << 18])
def test_the_body_does_not_depend_on_how_families_are_grouped_in_builds(
    monkeypatch: pytest.MonkeyPatch, group: int, buffer: int, piece: int
) -> None:
    state = rich_state()
    want = body(cached(state))
    monkeypatch.setattr(exposition, "GROUP", group)
    monkeypatch.setattr(exposition, "BUFFER", buffer)
    monkeypatch.setattr(exposition, "PIECE", piece)
    assert body(cached(state)) == want


def test_a_build_holds_at_most_its_buffer_of_lines_besides_the_streamed_family(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Families a build does not stream are held until the blocks are read: their estimated
    size stays within BUFFER, and the biggest family is streamed rather than held."""
    exp = cached(rich_state())
    exp.rebuild()
    blocks = list(exp._targets.values())
    sizes = [0] * len(exposition.FAMILIES)
    for block in blocks:
        prev = 0
        for f, end in enumerate(block.family_ends()):
            sizes[f] += end - prev
            prev = end
    monkeypatch.setattr(exposition, "BUFFER", max(sizes) - 1)
    groups = list(exposition._groups(blocks))
    assert [f for g in groups for f in g] == list(range(len(sizes)))
    for g in groups:
        assert sum(sizes[f] for f in g[1:]) <= max(sizes) - 1, g


def test_a_rendered_target_is_one_object_for_the_garbage_collector() -> None:
    """A full collection walks every block: besides the target and its result (counted once
    anyway), a block must hold nothing more the collector tracks (no identity tuple, no array)."""
    state = make_state(starttls_ok())
    exp = cached(state)
    body(exp)
    (block,) = exp._targets.values()
    tracked = [o for o in gc.get_referents(block) if gc.is_tracked(o) and o is not type(block)]
    assert {id(o) for o in tracked} == {id(RELAY), id(state.snapshot().results[RELAY.name])}


def test_a_render_that_fails_leaves_nothing_for_the_next() -> None:
    """Renders reuse one set of sinks per thread: a builder that raises half-way must not leave
    its lines to the next block."""
    base = {"target": "x"}

    def broken(families: exposition.Families) -> None:
        families["smtp_tls_probe_success"].put(base, {}, 1.0)
        raise RuntimeError("builder bug")

    def one(families: exposition.Families) -> None:
        families["smtp_tls_probe_interval_seconds"].put(base, {}, 60.0)

    with pytest.raises(RuntimeError):
        exposition.render(broken, None, None, ())
    block = exposition.render(one, None, None, ())
    assert zlib.decompress(block.data) == b'smtp_tls_probe_interval_seconds{target="x"} 60.0\n'
