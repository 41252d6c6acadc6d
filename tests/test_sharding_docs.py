"""docs/sharding.md: its Kubernetes example and scrape configs parse and hold together."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import parse_config
from exporter.service.main import build_parser
from exporter.shard import Shard
from tests.test_alerts import run_promtool

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sharding.md"
ROOT = DOCS.parent.parent


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)


def kubernetes() -> dict[str, dict[str, Any]]:
    """kind -> the one object of that kind in the Kubernetes example."""
    (block,) = [b for b in yaml_blocks() if "kind: StatefulSet" in b]
    objects = [o for o in yaml.safe_load_all(block) if o is not None]
    kinds = [o["kind"] for o in objects]
    assert sorted(kinds) == ["ConfigMap", "PodMonitor", "Service", "StatefulSet"]
    return {o["kind"]: o for o in objects}


def container() -> dict[str, Any]:
    (c,) = kubernetes()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def test_the_replica_count_is_the_shard_count_and_the_index_the_pod_index() -> None:
    sts = kubernetes()["StatefulSet"]
    c = container()
    # The flags as Kubernetes passes them, with $(SHARD_INDEX) expanded for each pod.
    env = {e["name"]: e for e in c["env"]}
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert "--shard.index=$(SHARD_INDEX)" in c["args"]
    replicas = sts["spec"]["replicas"]
    shards = []
    for ordinal in range(replicas):
        args = [a.replace("$(SHARD_INDEX)", str(ordinal)) for a in c["args"]]
        flags = build_parser().parse_args(args)
        shards.append(Shard.from_flags(flags.shard_index, flags.shard_count))
    assert shards == [Shard(i, replicas) for i in range(replicas)]


def test_the_config_map_is_a_valid_config_mounted_where_the_flag_reads_it() -> None:
    objects = kubernetes()
    cm, sts = objects["ConfigMap"], objects["StatefulSet"]
    parse_config(cm["data"]["config.yml"])  # raises ConfigError if not
    pod = sts["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    (mount,) = container()["volumeMounts"]
    assert mount["name"] == volume["name"]
    flags = build_parser().parse_args(
        [a for a in container()["args"] if not a.startswith("--shard.index")]
    )
    assert flags.config_file == f"{mount['mountPath']}/config.yml"
    # the image's default config path, so that the mount replaces it
    assert f"--config.file={flags.config_file}" in (ROOT / "Dockerfile").read_text()


def test_selectors_labels_and_ports_match() -> None:
    objects = kubernetes()
    sts, svc, monitor = objects["StatefulSet"], objects["Service"], objects["PodMonitor"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    selects = sts["spec"]["selector"]["matchLabels"]
    assert selects.items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"  # headless: a DNS name per pod
    namespaces = {o["metadata"]["namespace"] for o in objects.values()}
    assert len(namespaces) == 1
    c = container()
    (port,) = c["ports"]
    assert port["containerPort"] == 9465  # --web.listen-address's default
    names = {port["name"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= names
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in names
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"


def scrape_configs() -> list[dict[str, Any]]:
    jobs = []
    for block in yaml_blocks():
        if block.startswith("scrape_configs:"):
            jobs += yaml.safe_load(block)["scrape_configs"]
    return jobs


def test_the_scrape_configs_parse_and_route_probes_by_the_shard_count() -> None:
    jobs = {j["job_name"]: j for j in scrape_configs()}
    assert set(jobs) == {"smtp_tls", "smtp_tls_probe"}
    assert len(jobs["smtp_tls"]["static_configs"][0]["targets"]) == 3
    relabel = jobs["smtp_tls_probe"]["relabel_configs"]
    (hashmod,) = [r for r in relabel if r.get("action") == "hashmod"]
    replicas = kubernetes()["StatefulSet"]["spec"]["replicas"]
    assert hashmod["modulus"] == replicas
    assert hashmod["source_labels"] == ["__param_target"]
    (route,) = [r for r in relabel if r.get("target_label") == "__address__"]
    assert route["source_labels"] == [hashmod["target_label"]]
    # the StatefulSet's pod DNS names through its headless Service
    sts = kubernetes()["StatefulSet"]
    name, ns = sts["metadata"]["name"], sts["metadata"]["namespace"]
    service = sts["spec"]["serviceName"]
    assert route["replacement"] == f"{name}-$1.{service}.{ns}.svc:9465"


@pytest.mark.parametrize("block", [b for b in yaml_blocks() if b.startswith("- source_labels")])
def test_the_relabel_snippet_is_a_hashmod_of_the_target_label(block: str) -> None:
    (rule,) = yaml.safe_load(block)
    assert rule["action"] == "hashmod" and rule["source_labels"] == ["target"]


def test_promtool_accepts_the_suggested_rules(tmp_path: Path) -> None:
    (block,) = [b for b in yaml_blocks() if b.startswith("groups:")]
    rules = tmp_path / "shards.yml"
    rules.write_text(block, encoding="utf-8")
    done = run_promtool("check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 2 rules found" in done.stdout
