"""Sharding end to end, against a real Prometheus on loopback.

Three exporter processes (`--shard.count=3`, indexes 0 to 2) share one config whose targets all
point at a closed loopback port. One Prometheus scrapes the three, and, in a second job, runs its
own `hashmod` relabelling over every target name (as the `target` label of a target that is
never a real endpoint: 127.0.0.1:1, scraped once an hour). The test checks that Prometheus'
hashmod puts each name where exporter.shard does, that each name's series come from the replica
whose `smtp_tls_exporter_shard_index` is that hash, and that the rules docs/sharding.md
suggests are quiet while every replica runs and fire when one stops.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from exporter.shard import hashmod
from tests.conftest import need
from tests.test_paging_e2e import daemon, installed, wait_for, wait_ready
from tests.test_service_e2e import (
    PROMETHEUS,
    ExporterProcess,
    exporter_process,
    free_port,
    http,
    query,
)
from tests.test_shard import NAMES

SHARDS = 3
MODULI = (2, 3, 7, 1000)
JOB = "smtp_tls"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "sharding.md"


def exporter_config(port: int) -> str:
    targets = [{"name": name, "host": "127.0.0.1", "port": port} for name in NAMES]
    config = {"defaults": {"interval": "1h", "timeout": "2s"}, "targets": targets}
    return yaml.safe_dump(config, allow_unicode=True)


def prometheus_config(exporters: list[str]) -> str:
    names = [{"targets": ["127.0.0.1:1"], "labels": {"target": name}} for name in NAMES]
    hashmods = [
        {
            "source_labels": ["target"],
            "modulus": m,
            "target_label": f"hash_{m}",
            "action": "hashmod",
        }
        for m in MODULI
    ]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": exporters}]},
            {
                "job_name": "hashmod",
                "scrape_interval": "1h",  # only the relabelled labels matter
                "static_configs": names,
                "relabel_configs": hashmods,
            },
        ],
    }
    return yaml.safe_dump(config, allow_unicode=True)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def replicas(tmp: Path, port: int) -> Iterator[list[ExporterProcess]]:
    config = tmp / "config.yml"
    config.write_text(exporter_config(port), encoding="utf-8")
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                exporter_process(config, f"--shard.index={i}", f"--shard.count={SHARDS}")
            )
            for i in range(SHARDS)
        ]


@contextlib.contextmanager
def prometheus(tmp: Path, exporters: list[ExporterProcess]) -> Iterator[str]:
    need(installed(PROMETHEUS), f"{PROMETHEUS} is not installed (apt-get install prometheus)")
    urls = [e.url.removeprefix("http://") for e in exporters]
    (tmp / "prometheus.yml").write_text(prometheus_config(urls), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        PROMETHEUS,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = tmp / "prometheus.log"
    with daemon(argv, log) as proc:
        wait_ready(url, proc, log)
        yield url


def active_targets(prom: str) -> list[dict[str, Any]]:
    status, body = http("GET", f"{prom}/api/v1/targets?state=active", timeout=5)
    assert status == 200, body
    targets: list[dict[str, Any]] = json.loads(body)["data"]["activeTargets"]
    return targets


def suggested_rules() -> dict[str, str]:
    """alert name -> expr, from the rule file in docs/sharding.md."""
    blocks = re.findall(r"```yaml\n(groups:\n.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "docs/sharding.md: one rule file (a ```yaml block with groups:)"
    rules = [r for g in yaml.safe_load(blocks[0])["groups"] for r in g["rules"]]
    return {r["alert"]: r["expr"] for r in rules}


def firing(prom: str, exprs: dict[str, str]) -> set[str]:
    return {name for name, expr in exprs.items() if query(prom, expr)}


def test_replicas_split_the_config_as_prometheus_hashmod_does(tmp_path: Path) -> None:
    with (
        closed_port() as port,
        replicas(tmp_path, port) as exporters,
        prometheus(tmp_path, exporters) as prom,
    ):
        for i, exp in enumerate(exporters):  # each says at start which part it probes
            mine = sum(hashmod(name, SHARDS) == i for name in NAMES)
            line = exp.wait_line(lambda s: "msg=started" in s, 5, "the 'started' line")
            assert f" targets={mine} domains=0 shard={i}/{SHARDS} " in line, line
            assert line.endswith(f" config_targets={len(NAMES)} config_domains=0"), line

        # Prometheus' own hashmod of every name, for every modulus
        found = wait_for(
            lambda: [t for t in active_targets(prom) if t["labels"]["job"] == "hashmod"],
            lambda ts: len(ts) == len(NAMES),
            "a target per name in the hashmod job",
        )
        by_prometheus = {t["labels"]["target"]: t["labels"] for t in found}
        assert set(by_prometheus) == set(NAMES)
        for name, labels in by_prometheus.items():
            for m in MODULI:
                assert int(labels[f"hash_{m}"]) == hashmod(name, m), (name, m)

        # the replicas' series, through Prometheus: each name probed by its shard, once
        def probed() -> list[dict[str, Any]]:
            return query(prom, f'smtp_tls_probe_success{{job="{JOB}"}}')

        series = wait_for(probed, lambda s: len(s) == len(NAMES), "every name's result")
        index = {
            s["metric"]["instance"]: int(s["value"][1])
            for s in query(prom, f'smtp_tls_exporter_shard_index{{job="{JOB}"}}')
        }
        assert sorted(index.values()) == list(range(SHARDS))
        where = {s["metric"]["target"]: index[s["metric"]["instance"]] for s in series}
        assert len(where) == len(NAMES)
        for name, shard in where.items():
            assert int(by_prometheus[name][f"hash_{SHARDS}"]) == shard, name

        # the rules docs/sharding.md suggests: quiet while every replica runs...
        rules = suggested_rules()
        assert len(rules) >= 2
        total = f'sum(smtp_tls_exporter_targets{{job="{JOB}"}})'
        assert float(query(prom, total)[0]["value"][1]) == len(NAMES)
        assert firing(prom, rules) == set()
        # ...a missing shard when one stops...
        address = exporters[1].url.removeprefix("http://")
        assert exporters[1].stop() == 0
        wait_for(
            lambda: firing(prom, rules),
            lambda names: names == {"SmtpTlsShardMissing"},
            "SmtpTlsShardMissing, alone, once a replica stopped",
        )
        # ...and a duplicate when its replacement is given another replica's index
        config = tmp_path / "config.yml"
        again = [
            f"--web.listen-address={address}",
            "--shard.index=0",
            f"--shard.count={SHARDS}",
        ]
        with exporter_process(config, *again):
            wait_for(
                lambda: firing(prom, rules),
                lambda names: names == {"SmtpTlsShardMissing", "SmtpTlsShardDuplicated"},
                "SmtpTlsShardDuplicated with SmtpTlsShardMissing",
            )
