"""Sharding: the hash is Prometheus' hashmod, the shards split the config exactly, the flags are
checked, and a sharded Service schedules its part only (on start and on reload) while /probe and
the shard metrics still see the whole config."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config, load_config, parse_config
from exporter.domains.config import DnsConfig, DomainConfig
from exporter.model import Failure, ProbeResult, Reason, Stage, Target
from exporter.service.main import Service, serve_command
from exporter.shard import Shard, hashmod
from tests.test_http import CannedChecker, until

# (value, modulus, Prometheus' hashmod). The first two are Prometheus' own expectations
# (model/relabel/relabel_test.go); the others are RFC 1321's MD5 test vectors, written as the
# digest's last 8 bytes read big-endian, so that the slicing and byte order are checked too.
HASHMOD = [
    ("baz", 1000, 976),
    ("foo\nbar", 1000, 734),
    ("", 1000, int("e9800998ecf8427e", 16) % 1000),  # MD5("") = d41d8cd98f00b204 e9800998ecf8427e
    ("a", 7, int("31c399e269772661", 16) % 7),  # MD5("a") = 0cc175b9c0f1b6a8 31c399e269772661
    ("abc", 3, int("d6963f7d28e17f72", 16) % 3),  # 900150983cd24fb0 d6963f7d28e17f72
    ("message digest", 10, int("525a2f31aaf161d0", 16) % 10),
    ("abc", 1, 0),
    ("abc", 2**64, int("d6963f7d28e17f72", 16)),  # the whole 64-bit number
]


@pytest.mark.parametrize(("value", "modulus", "expected"), HASHMOD)
def test_hashmod_is_prometheus_hashmod(value: str, modulus: int, expected: int) -> None:
    assert hashmod(value, modulus) == expected


def test_hashmod_hashes_the_utf8_bytes() -> None:
    # Go hashes a string's bytes, which are UTF-8: "ü" is c3 bc, not fc.
    import hashlib

    utf8 = hashlib.md5("mx.bücher.test".encode()).digest()
    latin1 = hashlib.md5("mx.bücher.test".encode("latin-1")).digest()
    assert hashmod("mx.bücher.test", 2**64) == int.from_bytes(utf8[8:], "big")
    assert hashmod("mx.bücher.test", 2**64) != int.from_bytes(latin1[8:], "big")


@pytest.mark.parametrize("modulus", [0, -1])
def test_hashmod_needs_a_positive_modulus(modulus: int) -> None:
    with pytest.raises(ValueError, match="not a positive integer"):
        hashmod("x", modulus)


# -- the flags --------------------------------------------------------------------------------

FLAGS = [
    ((None, 1), Shard(0, 1)),
    ((0, 1), Shard(0, 1)),
    ((2, 3), Shard(2, 3)),
    ((0, 3), Shard(0, 3)),
    ((None, 3), "--shard.index: required with --shard.count 3"),
    ((3, 3), r"--shard.index: 3 is not between 0 and 2 \(--shard.count is 3\)"),
    ((-1, 3), r"--shard.index: -1 is not between 0 and 2"),
    ((1, 1), r"--shard.index: 1 is not between 0 and 0"),
    ((None, 0), "--shard.count: 0 is not a positive integer"),
    ((0, -2), "--shard.count: -2 is not a positive integer"),
]


@pytest.mark.parametrize(("flags", "expected"), FLAGS)
def test_shard_from_flags(flags: tuple[int | None, int], expected: Shard | str) -> None:
    if isinstance(expected, Shard):
        assert Shard.from_flags(*flags) == expected
    else:
        with pytest.raises(ValueError, match=f"^{expected}"):
            Shard.from_flags(*flags)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shard.count=3"], "--shard.index: required with --shard.count 3"),
        (["--shard.count=3", "--shard.index=3"], "--shard.index: 3 is not between 0 and 2"),
        (["--shard.count=0"], "--shard.count: 0 is not a positive integer"),
        (["--shard.count=x"], "argument --shard.count: invalid int value: 'x'"),
        # what Kubernetes leaves when the variable in `$(SHARD_INDEX)` is not defined
        (
            ["--shard.count=2", "--shard.index=$(SHARD_INDEX)"],
            "argument --shard.index: invalid int value: '$(SHARD_INDEX)'",
        ),
    ],
)
def test_bad_shard_flags_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        serve_command(["--config.file=/nonexistent.yml", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_config_check_reports_the_shards_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(config_text(NAMES, DOMAINS))
    config = load_config(str(path))
    owned = Shard(1, 3).part(config)
    mine = f"{len(owned.targets)} targets, {len(owned.domains)} domains"
    assert serve_command([f"--config.file={path}", "--config.check"]) == 0
    assert serve_command([f"--config.file={path}", "--config.check", *shard_flags(1, 3)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{path}: OK ({len(NAMES)} targets, {len(DOMAINS)} domains)",
        f"{path}: OK ({len(NAMES)} targets, {len(DOMAINS)} domains; shard 1/3: {mine})",
    ]


# -- the split --------------------------------------------------------------------------------

NAMES = [f"mx{i}.example.test:25" for i in range(30)] + [
    *("submission", "relay", "mx.bücher.test:25", "[2001:db8::1]:587", "a;b"),
    *("x" * 200, "Mail.Example.Test:465", "mail.example.test:465", "名前"),
]
DOMAINS = [f"d{i}.example.test" for i in range(10)] + ["example.test", "xn--bcher-kva.test"]


def config_text(names: list[str], domains: list[str]) -> str:
    # Names are what counts; every target is the same closed loopback port.
    targets = "".join(f"  - {{name: {name!r}, host: 127.0.0.1, port: 1}}\n" for name in names)
    listed = "".join(f"  - {d}\n" for d in domains)
    return f"defaults: {{interval: 1h}}\ntargets:\n{targets}domains:\n{listed}"


def shard_flags(index: int, count: int) -> list[str]:
    return [f"--shard.index={index}", f"--shard.count={count}"]


def sharded_config() -> Config:
    return parse_config(config_text(NAMES, DOMAINS))


@pytest.mark.parametrize("count", [1, 2, 3, 5, 16, 64])
def test_the_shards_split_the_config_exactly(count: int) -> None:
    config = sharded_config()
    parts = [Shard(i, count).part(config) for i in range(count)]
    targets = [t.name for part in parts for t in part.targets]
    domains = [d.name for part in parts for d in part.domains]
    # every target and domain in exactly one part, in the config's order within each part
    assert sorted(targets) == sorted(t.name for t in config.targets)
    assert len(set(targets)) == len(targets)
    assert sorted(domains) == sorted(d.name for d in config.domains)
    assert len(set(domains)) == len(domains)
    for i, part in enumerate(parts):
        assert all(hashmod(t.name, count) == i for t in part.targets)
        assert all(hashmod(d.name, count) == i for d in part.domains)
        order = [t.name for t in config.targets if t in part.targets]
        assert [t.name for t in part.targets] == order
        # everything but the lists is the config's
        assert part.dns == config.dns and part.defaults == config.defaults
        assert part.concurrency == config.concurrency


def test_more_than_one_shard_gets_something() -> None:
    # Not a property of hashing in general, but a check that `part` does not hand everything
    # to one shard (e.g. by comparing with the wrong index).
    config = sharded_config()
    sizes = [len(Shard(i, 3).part(config).targets) for i in range(3)]
    assert all(size > 3 for size in sizes), sizes


def test_one_shard_is_the_whole_config() -> None:
    config = sharded_config()
    assert Shard().part(config) is config
    assert all(Shard().owns(t.name) for t in config.targets)


# -- a sharded service ------------------------------------------------------------------------


class Probes:
    """A probe that records what it was asked to probe and fails at once."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def __call__(self, target: Target) -> ProbeResult:
        self.names.append(target.name)
        failure = Failure(Stage.CONNECT, Reason.CONNECTION_REFUSED, "scripted")
        return ProbeResult(target=target, started_at=time.time(), success=False, failure=failure)


def never_checks(domain: DomainConfig, dns: DnsConfig) -> CannedChecker:
    return CannedChecker(None)


def sample(service: Service, name: str) -> float | None:
    """The value of the unlabelled sample `name` in the service's /metrics answer."""
    parts = service.metrics("", False).parts
    for family in text_string_to_metric_families(b"".join(parts).decode()):
        for s in family.samples:
            if s.name == name and not s.labels:
                return float(s.value)
    return None


MORE = [f"new{i}.example.test:25" for i in range(12)]  # what the reload adds


async def test_a_sharded_service_schedules_its_part_and_probes_any_target_on_demand(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yml"
    targets: list[str] = []
    domains: list[str] = []
    for index in range(3):
        path.write_text(config_text(NAMES, DOMAINS))
        got = await run_shard(path, Shard(index, 3))
        targets += got[0]
        domains += got[1]
    # after the reload, the three shards probe the new config between them, once each
    assert sorted(targets) == sorted([*NAMES, *MORE])
    assert sorted(domains) == sorted(DOMAINS[:6])


async def run_shard(path: Path, shard: Shard) -> tuple[list[str], list[str]]:
    """Start, check, reload, check; the names of the targets and domains it ends with."""
    mine = [n for n in NAMES if hashmod(n, shard.count) == shard.index]
    my_domains = [d for d in DOMAINS if hashmod(d, shard.count) == shard.index]
    probes = Probes()
    service = Service(
        load_config(str(path)), str(path), probes, make_checker=never_checks, shard=shard
    )
    await service.start()
    try:
        await until(lambda: len(service.snapshot().results) == len(mine), "the shard's probes")
        snap = service.snapshot()
        assert [t.name for t in snap.targets] == mine
        assert [d.name for d in snap.domains] == my_domains
        assert sorted(probes.names) == sorted(mine)
        assert sample(service, "smtp_tls_exporter_shard_index") == shard.index
        assert sample(service, "smtp_tls_exporter_shard_count") == shard.count
        assert sample(service, "smtp_tls_exporter_targets") == len(mine)
        assert sample(service, "smtp_tls_exporter_domains") == len(my_domains)
        assert sample(service, "smtp_tls_exporter_config_targets") == len(NAMES)
        assert sample(service, "smtp_tls_exporter_config_domains") == len(DOMAINS)

        # /probe is on demand: another shard's target may be probed here too
        theirs = next(n for n in NAMES if n not in mine)
        answer = await asyncio.to_thread(service.probe, theirs, None)
        assert answer.result.target.name == theirs
        assert probes.names[-1] == theirs
        assert theirs not in {t.name for t in service.snapshot().targets}

        # a reload splits the new config the same way
        path.write_text(config_text([*NAMES, *MORE], DOMAINS[:6]))
        ok, message = await service.reload_async()
        assert ok, message
        now_mine = [n for n in [*NAMES, *MORE] if hashmod(n, shard.count) == shard.index]
        snap = service.snapshot()
        assert [t.name for t in snap.targets] == now_mine
        assert [d.name for d in snap.domains] == [d for d in my_domains if d in DOMAINS[:6]]
        assert sample(service, "smtp_tls_exporter_config_targets") == len(NAMES) + len(MORE)
        assert sample(service, "smtp_tls_exporter_config_domains") == 6
        return now_mine, [d.name for d in snap.domains]
    finally:
        await service.stop()


async def test_an_unsharded_service_says_shard_0_of_1(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(config_text(["a", "b"], []))
    service = Service(load_config(str(path)), str(path), Probes())
    assert sample(service, "smtp_tls_exporter_shard_index") == 0
    assert sample(service, "smtp_tls_exporter_shard_count") == 1
    assert sample(service, "smtp_tls_exporter_config_targets") == 2
