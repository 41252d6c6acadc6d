"""/metrics from a cache: each target's lines rendered once per result, not at every scrape.

prometheus_client renders every sample at every scrape: at 10,000 targets that is some 200,000
samples, seconds of CPU with the GIL held, and probing stalls meanwhile. Here the series of one
configured target (or one mail domain with its MX probes) are rendered to text by the
collector's own sample builders (collector.py), so they are the same series, once per new
result: `ServiceState.on_record` renders a target's lines on the event loop as its probe ends,
and anything else that changed (checks, a domain's check, a reload) is rendered by the next build.

A build joins the cached lines family by family and keeps only their raw deflate stream, ended by
a sync flush; `smtp_tls_cert_expiry_days`, which moves with the clock, is written at each build
from the certificate's notAfter. A scrape answers with the latest build followed by the exporter's
own families, rendered fresh by prometheus_client (small): for gzip, the tail's deflate stream
follows the cached one in the same gzip member, its CRC-32 continued over the tail (RFC 1952);
for plain text the cached stream is inflated. The cached families are gauges whose HELP and TYPE
lines are the same in the text format and in OpenMetrics, so one build serves both.

Freshness: a build that took less than SYNC_BUDGET is redone by the scrape itself whenever the
state changed, so small configs (and tests) always see the latest results. Above that a
background thread rebuilds every max(MIN_REFRESH, REFRESH_FACTOR x the last build's duration)
seconds while someone scrapes and the state changed, and a scrape serves the latest build: values
may be that many seconds old (`smtp_tls_last_probe_timestamp_seconds` says how old each is). A
build older than MAX_AGE is redone by the scrape, whatever it costs.
"""

from __future__ import annotations

import itertools
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter.domains.config import DomainConfig
from exporter.domains.model import DomainResult
from exporter.model import ProbeResult, Target
from exporter.service.collector import (
    add_domain_block,
    add_target_samples,
    endpoint_families,
    exporter_families,
)
from exporter.service.domain_metrics import domain_families
from exporter.service.families import Families, Family, Labels
from exporter.service.state import CheckResults, ServiceState, Snapshot

EXPIRY = "smtp_tls_cert_expiry_days"
SYNC_BUDGET = 0.02  # seconds: a build cheaper than this is redone by the scrape itself
MIN_REFRESH = 2.0  # seconds between background builds, at least
REFRESH_FACTOR = 20  # ... and at least this many times the last build's duration
MAX_AGE = 120.0  # seconds: an older build is redone by the scrape
SCRAPED_RECENTLY = 300.0  # seconds: no background builds when nobody scrapes
PLAIN_PIECE = 1 << 20  # bytes of a plain answer inflated at a time
GROUP = 16  # families inflated together by a build, at most
BUFFER = 4 << 20  # bytes of lines a build holds for the families it does not stream, about
SAMPLE = 100  # blocks a build looks at to estimate each family's size
PIECE = 1 << 18  # bytes of a family's lines compressed at a time by a build
LEVEL = 1  # zlib level: 3x cheaper than 6 on this text, for an answer about 20% larger
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime
_DAY = 86400.0


def _families() -> dict[str, Family]:
    return endpoint_families() | domain_families()


FAMILIES: tuple[str, ...] = tuple(_families())
_EXPIRY_INDEX = FAMILIES.index(EXPIRY)


def _headers() -> tuple[bytes, ...]:
    """Each family's HELP and TYPE lines, as prometheus_client writes them in both formats."""
    out = []
    for name, family in _families().items():
        family.add_metric([], 0)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed([family]))
        head = b"".join(generate_latest(registry).splitlines(keepends=True)[:2])
        if not openmetrics.generate_latest(registry).startswith(head):  # type: ignore[no-untyped-call]
            raise RuntimeError(f"{name}: HELP or TYPE differ between text and OpenMetrics")
        out.append(head)
    return tuple(out)


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


_HEADERS = _headers()


_COMMON = {0.0: "0.0", 1.0: "1.0"}


def _value(value: float) -> str:
    """A sample value as prometheus_client writes it (1.0, 0.25, 1.76e+09, +Inf, NaN)."""
    text = _COMMON.get(value)
    if text is None:
        text = repr(value)
        # repr() is floatToGoString's answer but for large numbers, infinities and NaN.
        if text[-1] in "fn" or (value > 0 and text.find(".") > 6):
            text = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


# 'name="value"' of label pairs seen: the same few recur in every target's lines. Bounded: label
# values come from the config and the certificates seen; cleared should they ever pile up.
_PAIRS: dict[tuple[str, str], str] = {}
_PAIRS_MAX = 200_000


def _pairs(labels: Labels) -> str:
    """'a="1",b="2"', the label pairs as prometheus_client writes them, in order."""
    pairs = _PAIRS
    out = []
    for pair in labels.items():
        text = pairs.get(pair)
        if text is None:
            if len(pairs) >= _PAIRS_MAX:
                pairs.clear()
            text = pairs[pair] = f'{pair[0]}="{_escape(pair[1])}"'
        out.append(text)
    return ",".join(out)


class _Sink:
    """One family's lines of the block being rendered, written as the builders put samples."""

    __slots__ = ("exact", "last", "lines", "name")

    def __init__(self, name: str, last: list[object]) -> None:
        self.name = name
        self.lines: list[str] = []
        self.exact = name == EXPIRY  # absolute days, in full, to be shifted at each build
        # [base, its pairs' text], shared by the sinks of one block: the builders pass the same
        # base to each sample of an endpoint, and holding it keeps its id from being reused.
        self.last = last

    def put(self, base: Labels, extra: Labels, value: float) -> None:
        last = self.last
        if last[0] is not base:
            last[0] = base
            last[1] = _pairs(base)
        labels: str = last[1]  # type: ignore[assignment]
        if extra:
            labels = f"{labels},{_pairs(extra)}" if labels else _pairs(extra)
        value = float(value)
        text = repr(value) if self.exact else (_COMMON.get(value) or _value(value))
        self.lines.append(
            f"{self.name}{{{labels}}} {text}\n" if labels else f"{self.name} {text}\n"
        )


class _Sinks(dict[str, _Sink]):
    """A sink for every family, made once per thread that renders and emptied by each render."""

    def __init__(self) -> None:
        self.last: list[object] = [None, ""]
        self.ordered = tuple(_Sink(name, self.last) for name in FAMILIES)
        super().__init__((sink.name, sink) for sink in self.ordered)

    def reset(self) -> None:
        self.last[:] = [None, ""]
        for sink in self.ordered:
            sink.lines.clear()


_local = threading.local()


def _sinks() -> _Sinks:
    sinks: _Sinks | None = getattr(_local, "sinks", None)
    if sinks is None:
        sinks = _local.sinks = _Sinks()
    return sinks


@dataclass(frozen=True, slots=True)
class Block:
    """The rendered series of one target (or one domain and its MX probes), compressed, and
    what they were rendered from. Flat, with no tuple or array of its own, so that a target's
    block is one object for the garbage collector to walk, not three."""

    head: object  # the target (or domain) as configured: an equal one is the same
    source: object  # its result (or check result), replaced, never changed: compared by identity
    more: tuple[object, ...]  # the rest rendered from (check results), compared by identity
    data: bytes  # zlib of the lines of every family, in FAMILIES order (about 5x smaller)
    ends: bytes  # array("I"), as bytes: where family i's lines end in the inflated data

    def family_ends(self) -> memoryview:
        return memoryview(self.ends).cast("I")

    def same(self, head: object, source: object, more: tuple[object, ...]) -> bool:
        if not (self.head is head or self.head == head) or self.source is not source:
            return False
        return len(self.more) == len(more) and all(
            x is y for x, y in zip(self.more, more, strict=True)
        )


def render(
    fill: Callable[[Families], None], head: object, source: object, more: tuple[object, ...]
) -> Block:
    """Render what `fill` puts into empty families. The clock is 0, so the lines of the expiry
    family carry absolute days (notAfter / 86400), in full, to be shifted at each build."""
    sinks = _sinks()
    try:
        fill(sinks)
    except BaseException:
        sinks.reset()
        raise
    texts: list[bytes] = []
    sizes: list[int] = []
    for sink in sinks.ordered:
        lines = sink.lines
        if lines:
            raw = "".join(lines).encode()
            lines.clear()
            texts.append(raw)
            sizes.append(len(raw))
        else:
            sizes.append(0)
    sinks.last[0] = None  # the base labels of this block, no longer needed
    data = zlib.compress(b"".join(texts), LEVEL)
    return Block(head, source, more, data, array("I", itertools.accumulate(sizes)).tobytes())


def _groups(blocks: list[Block]) -> Iterator[range]:
    """Runs of consecutive families a build inflates the blocks for at once: each run's first
    family is streamed, the others are held until the blocks have been read, so a run holds
    at most about BUFFER bytes of lines (estimated from the first SAMPLE blocks), or one family."""
    count = len(FAMILIES)
    sizes = [0] * count
    for block in blocks[:SAMPLE]:
        prev = 0
        for f, end in enumerate(block.family_ends()):
            sizes[f] += end - prev
            prev = end
    scale = len(blocks) / max(1, min(len(blocks), SAMPLE))
    first = 0
    while first < count:
        last, held = first + 1, 0.0
        while last < count and held + sizes[last] * scale <= BUFFER and last - first < GROUP:
            held += sizes[last] * scale
            last += 1
        yield range(first, last)
        first = last


def _columns(blocks: list[Block], shift: float) -> Iterator[tuple[int, bytes | bytearray]]:
    """(family index, lines) in the exposition's order: every block's lines of family 0, then
    of family 1, ...; one family's lines may come in several pieces.

    Blocks are inflated once per run of families (_groups), not once per family; a block with
    no lines in a run is not inflated for it. The run's first family goes out as each block is
    inflated; the others' lines are held, each family's in one buffer, until the run ends.
    """
    for group in _groups(blocks):
        head, rest = group[0], group[1:]
        columns = [bytearray() for _ in rest]
        streamed = bytearray()  # the head family's lines, sent on a PIECE at a time
        for block in blocks:
            ends = block.family_ends()
            prev = ends[head - 1] if head else 0
            if ends[group[-1]] == prev:
                continue
            with memoryview(zlib.decompress(block.data)) as text:
                end = ends[head]
                if end != prev:
                    lines = text[prev:end]
                    streamed += _shifted(lines, shift) if head == _EXPIRY_INDEX else lines
                    prev = end
                for column, f in zip(columns, rest, strict=True):
                    end = ends[f]
                    if end != prev:
                        column += text[prev:end]
                    prev = end
            if len(streamed) >= PIECE:
                yield head, streamed
                streamed = bytearray()
        if streamed:
            yield head, streamed
        for i, f in enumerate(rest):
            column = columns[i]
            if column:
                yield f, _shifted(column, shift) if f == _EXPIRY_INDEX else column
            columns[i] = bytearray()  # before the next family's turn


def _shifted(lines: bytes | bytearray | memoryview, shift: float) -> bytes:
    """Expiry lines with absolute days made relative: days until expiry at the build's time."""
    out = []
    for line in bytes(lines).splitlines():
        head, _, days = line.rpartition(b" ")
        out.append(f"{head.decode()} {_value(float(days) - shift)}\n")
    return "".join(out).encode()


@dataclass(frozen=True)
class Build:
    deflated: bytes  # raw deflate of the cached families, ending in a sync flush (not final)
    crc: int  # CRC-32 of them, uncompressed
    size: int  # their uncompressed length
    version: int  # the state's version they were built from
    at: float  # monotonic time of the build's start
    seconds: float  # how long the build took


class CachedExposition:
    """Builds the cached families and serves /metrics; `renders` counts blocks rendered."""

    def __init__(
        self,
        state: ServiceState,
        tail: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`tail`: the exporter's own families, rendered at every scrape after the cached ones."""
        self._state = state
        self._tail = tail
        self._clock = clock
        self._targets: dict[str, Block] = {}
        self._domains: dict[str, Block] = {}
        self._build: Build | None = None
        self._lock = threading.Lock()  # one build at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_scrape = float("-inf")
        self.renders = 0

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Render each result as it is recorded, and start the background builds."""
        self._state.on_record = self.note
        self._thread = threading.Thread(target=self._run, name="metrics-build", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._refresh()):
            if time.monotonic() - self._last_scrape > SCRAPED_RECENTLY:
                continue
            build = self._build
            if build is None or build.version != self._state.version:
                self.rebuild()

    def _refresh(self) -> float:
        build = self._build
        return MIN_REFRESH if build is None else max(MIN_REFRESH, REFRESH_FACTOR * build.seconds)

    # -- rendering ----------------------------------------------------------------------------

    def note(self, result: ProbeResult) -> None:
        """Render a recorded result's target now (on the event loop, as its probe ends)."""
        target = result.target
        self._target_block(target, result, self._state.checks.get(target))

    def _target_block(
        self, target: Target, result: ProbeResult | None, checks: CheckResults | None
    ) -> Block:
        more = () if checks is None else (checks,)
        block = self._targets.get(target.name)
        if block is None or not block.same(target, result, more):
            block = render(
                lambda f: add_target_samples(f, target, result, checks, 0.0), target, result, more
            )
            self._targets[target.name] = block
            self.renders += 1
        return block

    def _domain_block(
        self, domain: DomainConfig, checked: DomainResult | None, snap: Snapshot
    ) -> Block:
        probes = () if checked is None else (m.probe for m in checked.mx_checks if m.probe)
        more = tuple(snap.checks.get(p.target) for p in probes)
        block = self._domains.get(domain.name)
        if block is None or not block.same(domain, checked, more):
            block = render(
                lambda f: add_domain_block(f, f, domain, checked, snap.checks, 0.0),
                domain,
                checked,
                more,
            )
            self._domains[domain.name] = block
            self.renders += 1
        return block

    # -- building -----------------------------------------------------------------------------

    def rebuild(self) -> Build:
        with self._lock:
            start = time.monotonic()
            snap = self._state.snapshot()
            now = self._clock()
            blocks = [
                self._target_block(t, snap.results.get(t.name), snap.checks.get(t))
                for t in snap.targets
            ]
            blocks += [
                self._domain_block(d, snap.domain_results.get(d.name), snap) for d in snap.domains
            ]
            self._forget(snap)
            deflater = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
            chunks = []
            crc = size = 0
            family = -1
            for f, lines in _columns(blocks, now / _DAY):
                with memoryview(lines) as view:
                    parts = [] if f == family else [memoryview(_HEADERS[f])]
                    family = f
                    parts += (view[i : i + PIECE] for i in range(0, len(view), PIECE))
                    for part in parts:
                        chunks.append(deflater.compress(part))
                        crc = zlib.crc32(part, crc)
                        size += len(part)
                        part.release()
            chunks.append(deflater.flush(zlib.Z_SYNC_FLUSH))
            build = Build(
                b"".join(chunks), crc, size, snap.version, start, time.monotonic() - start
            )
            self._build = build
            return build

    def _forget(self, snap: Snapshot) -> None:
        """Drop the blocks of targets and domains no longer configured."""
        if len(self._targets) > len(snap.targets):
            names = {t.name for t in snap.targets}
            self._targets = {k: v for k, v in self._targets.items() if k in names}
        if len(self._domains) > len(snap.domains):
            names = {d.name for d in snap.domains}
            self._domains = {k: v for k, v in self._domains.items() if k in names}

    def current(self) -> Build:
        """The build a scrape serves now (see the module's freshness rules)."""
        self._last_scrape = time.monotonic()
        build = self._build
        if (
            build is None
            or time.monotonic() - build.at > MAX_AGE
            or (build.version != self._state.version and build.seconds < SYNC_BUDGET)
        ):
            build = self.rebuild()
        return build

    # -- serving ------------------------------------------------------------------------------

    def answer(self, accept: str, gzip: bool) -> Answer:
        """A /metrics answer for this Accept header, gzip-encoded if `gzip`."""
        encoder, content_type = choose_encoder(accept)
        tail = encoder(self._tail)  # OpenMetrics' "# EOF" comes last, after the cached part
        build = self.current()
        if not gzip:
            return Answer(content_type, build.size + len(tail), _inflated(build.deflated, tail))
        deflater = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
        end = deflater.compress(tail) + deflater.flush()
        crc = zlib.crc32(tail, build.crc)
        trailer = struct.pack("<II", crc, (build.size + len(tail)) & 0xFFFFFFFF)
        parts = (_GZIP_HEADER, build.deflated, end, trailer)
        return Answer(content_type, sum(len(p) for p in parts), parts)


@dataclass(frozen=True)
class Answer:
    content_type: str
    length: int  # bytes in all parts
    parts: Iterable[bytes]  # the body, in pieces; iterate once


def _inflated(deflated: bytes, tail: bytes) -> Iterator[bytes]:
    """The plain body a piece at a time: a plain answer is rare (Prometheus asks for gzip), and
    inflating it whole would hold tens of MB at 10,000 targets."""
    inflater = zlib.decompressobj(-15)
    data = deflated
    while data:
        yield inflater.decompress(data, PLAIN_PIECE)
        data = inflater.unconsumed_tail
    yield tail


class ExporterFamilies(Collector):
    """The exporter's own families of the state (build info, reloads, probe counts, lag)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return exporter_families(self._snapshot())
