"""grafana/dashboard.json and the provisioning examples, read as Grafana would import them.

The dashboard is checked against Grafana's dashboard model as published in
grafana-foundation-sdk (generated from Grafana's own schema): decoding it and encoding it again
must keep every key and value, so a misspelt option or field shows up as lost. The rest is what an
import into any Grafana needs: a stable uid, the datasource as a variable, every query filtered by
the job variable and the target variable (the domain variable in the Mail domains section), and a
layout without overlaps. That every panel's query returns data
from a real Prometheus, and that every metric it names is one the exporter emits, is checked in
test_paging_e2e.py.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import need
from tests.test_alerts import metric_selectors

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboard.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = ["datasource", "job", "target", "domain"]
# The sections the dashboard has, in order, and the panels each must hold.
SECTIONS = {
    "Overview": {
        "Endpoints up",
        "Endpoints failing",
        "Failing endpoints",
        "Certificates expiring soonest",
        "STARTTLS not advertised",
        "TLS versions in use",
    },
    "Latency": {"TLS handshake latency", "Latency by phase: $target"},
    "Certificates": {"Certificate details"},
    "Mail domains": {
        "Domains in enforce mode",
        "MTA-STS checks failing",
        "MX not in enforced policy",
        "Enforce-mode MX not compliant",
        "Domains",
        "MTA-STS check failures",
        "MX hosts",
        "MTA-STS mode over time",
    },
    "Security checks": {
        "STARTTLS injection",
        "Accepting TLS 1.0 or 1.1",
        "Submission not requiring TLS",
        "TLS versions accepted",
        "Every address",
    },
    "Exporter": {"Config reload", "Probe rate by result", "Scheduler lag"},
}
# The section whose panels are about mail domains: filtered by $domain rather than $target.
DOMAIN_SECTION = "Mail domains"
# Grafana's values for the built-in interval variables, as substituted into queries.
BUILTINS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, also those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def sections(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Row title -> the panels below it, up to the next row, in reading order."""
    found: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = found.setdefault(panel["title"], [])
        else:
            current.append(panel)
    return found


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


_LABEL_VALUES = re.compile(r"label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)")


def label_values_query(variable: dict[str, Any]) -> tuple[str, str]:
    """A query variable's `label_values(selector, label)` as (selector, label)."""
    query = variable["query"]
    if isinstance(query, dict):
        query = query["query"]
    match = _LABEL_VALUES.fullmatch(query.strip())
    assert match is not None, f"variable {variable['name']}: not label_values(...): {query!r}"
    return match.group("selector") or "", match.group("label")


def substitute(expr: str, values: dict[str, str]) -> str:
    """A query as Grafana sends it: $name, ${name} and ${name:fmt} replaced by values[name]."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    names = {name for _, t in queries(dashboard) for name, _ in metric_selectors(t["expr"])}
    for variable in variables(dashboard).values():
        if variable["type"] == "query":
            selector, _ = label_values_query(variable)
            names |= {name for name, _ in metric_selectors(selector)}
    return names


# -- what an import needs -----------------------------------------------------------------------


def test_identity_is_stable_and_instance_free() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "smtp-tls-exporter"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard.get("id") is None, "an exported dashboard carries no instance's id"
    assert dashboard["title"] == "SMTP TLS"
    # Grafana 10.0's schema version: Grafana 10 and 11 both load it (11 migrates it up).
    assert dashboard["schemaVersion"] == 38
    assert "__inputs" not in dashboard, "the datasource is a variable, not an import input"


def test_every_query_uses_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel.get("datasource") == DATASOURCE, panel["title"]
    for panel, target in queries(dashboard):
        assert target.get("datasource") == DATASOURCE, (panel["title"], target["refId"])
    for variable in variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]

    def uids(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"].get("uid", "")
            for value in node.values():
                yield from uids(value)
        elif isinstance(node, list):
            for value in node:
                yield from uids(value)

    # the built-in annotation query is Grafana's own; everything else goes through the variable
    assert set(uids(dashboard)) == {"${datasource}", "-- Grafana --"}


def test_variables() -> None:
    dashboard = load_dashboard()
    found = variables(dashboard)
    assert list(found) == VARIABLES
    source = found["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for name in VARIABLES[1:]:
        variable = found[name]
        assert variable["type"] == "query", name
        assert variable["multi"] and variable["includeAll"], name
        # an "All" that matches any value without matching the empty string
        assert variable["allValue"] == ".+", name
        selector, label = label_values_query(variable)
        assert label == name
        if name != "job":
            assert 'job=~"$job"' in selector, f"${name} is not narrowed by $job: {selector}"
    assert label_values_query(found["job"]) == ("smtp_tls_exporter_build_info", "job")
    # every configured domain, checked or not yet: its interval is there from the config
    assert label_values_query(found["domain"])[0] == (
        'smtp_tls_domain_check_interval_seconds{job=~"$job"}'
    )


def test_every_query_is_filtered_by_job_and_by_target_or_domain() -> None:
    dashboard = load_dashboard()
    for section, members in sections(dashboard).items():
        by = 'domain=~"$domain"' if section == DOMAIN_SECTION else 'target=~"$target"'
        for panel in members:
            for target in panel["targets"]:
                where = f"{section}: {panel['title']} {target['refId']}"
                selectors = metric_selectors(target["expr"])
                assert selectors, f"{where}: no metric in {target['expr']!r}"
                for name, matchers in selectors:
                    assert 'job=~"$job"' in matchers, f"{where}: {name} is not filtered by $job"
                    if not name.startswith("smtp_tls_exporter_"):
                        assert by in matchers, f"{where}: {name} is not filtered by {by}"
                    assert "instance" not in matchers, f"{where}: {name} names an instance"
                assert "__name__" not in target["expr"]


def test_layout_has_the_sections_in_order_without_overlaps() -> None:
    dashboard = load_dashboard()
    top = dashboard["panels"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes: list[tuple[str, tuple[int, int, int, int]]] = []
    for panel in top:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert pos["h"] > 0 and pos["y"] >= 0, panel["title"]
        box = (pos["x"], pos["y"], pos["x"] + pos["w"], pos["y"] + pos["h"])
        for other_title, other in boxes:
            overlap = (
                box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]
            )
            assert not overlap, f"{panel['title']} overlaps {other_title}"
        boxes.append((panel["title"], box))
    # panels belong to the row above them, in reading order
    ordered = sorted(top, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert ordered[0]["type"] == "row"
    sections: dict[str, set[str]] = {}
    current = ""
    for panel in ordered:
        if panel["type"] == "row":
            current = panel["title"]
            assert not panel.get("collapsed"), f"row {current} hides its panels"
            sections[current] = set()
        else:
            sections[current].add(panel["title"])
    assert list(sections) == list(SECTIONS)
    for title, required in SECTIONS.items():
        assert required <= sections[title], (title, required - sections[title])


def test_handshake_latency_is_prominent_and_phases_repeat_per_target() -> None:
    dashboard = load_dashboard()
    by_title = {p["title"]: p for p in panels(dashboard)}
    handshake = by_title["TLS handshake latency"]
    assert handshake["gridPos"]["w"] == 24
    assert 'phase="tls_handshake"' in handshake["targets"][0]["expr"]
    latency_row = by_title["Latency"]["gridPos"]["y"]
    assert handshake["gridPos"]["y"] == latency_row + 1, "the first panel of its section"
    phases = by_title["Latency by phase: $target"]
    assert phases["repeat"] == "target"
    assert variables(dashboard)["target"]["multi"]


def test_failing_and_expiry_tables_show_stage_reason_and_days() -> None:
    dashboard = load_dashboard()
    by_title = {p["title"]: p for p in panels(dashboard)}
    failing = by_title["Failing endpoints"]
    assert "smtp_tls_probe_failure_info" in failing["targets"][0]["expr"]
    shown = failing["transformations"][0]["options"]["indexByName"]
    assert {"target", "stage", "reason"} <= set(shown)
    expiring = by_title["Certificates expiring soonest"]
    assert expiring["targets"][0]["expr"].startswith("sort(smtp_tls_cert_expiry_days{")
    assert expiring["options"]["sortBy"] == [{"displayName": "Days left", "desc": False}]
    details = by_title["Certificate details"]
    names = set(details["transformations"][-1]["options"]["renameByName"].values())
    assert {"Subject", "Issuer", "Days left", "Trusted", "Name match"} <= names


def test_mail_domain_panels_show_mode_validity_mx_and_tlsrpt() -> None:
    dashboard = load_dashboard()
    by_title = {p["title"]: p for p in sections(dashboard)[DOMAIN_SECTION]}

    def columns(title: str) -> set[str]:
        organize = by_title[title]["transformations"][-1]
        assert organize["id"] == "organize"
        return set(organize["options"]["renameByName"].values())

    assert {
        "Domain",
        "MTA-STS",
        "Record",
        "Policy valid",
        "MX lookup",
        "MX hosts",
        "TLS-RPT record",
        "TLS-RPT valid",
    } <= columns("Domains")
    assert {"Domain", "Reason"} <= columns("MTA-STS check failures")
    assert {"Domain", "MX", "In policy", "Compliant"} <= columns("MX hosts")
    # several queries, one row per domain (per MX host): merged
    for title in ("Domains", "MX hosts"):
        assert by_title[title]["transformations"][0]["id"] == "merge", title
    # the state timeline names every state its query can produce
    timeline = by_title["MTA-STS mode over time"]
    (mapping,) = timeline["fieldConfig"]["defaults"]["mappings"]
    shown = {v["text"] for v in mapping["options"].values()}
    assert shown == {"enforce", "testing", "none", "absent", "invalid"}


def test_substitute() -> None:
    values = {"job": "smtp_tls", "target": ".+", **BUILTINS}
    got = substitute('rate(x{job=~"$job",target=~"${target}"}[$__rate_interval])', values)
    assert got == 'rate(x{job=~"smtp_tls",target=~".+"}[1m])'


# -- Grafana's dashboard model ----------------------------------------------------------------


def grafana_sdk() -> Any:
    try:
        return importlib.import_module("grafana_foundation_sdk")
    except ImportError:
        need(False, "grafana-foundation-sdk is not installed (pip install grafana-foundation-sdk)")


def without_import_metadata(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard less `__requires` and the like, which an import reads and does not keep."""
    return {k: v for k, v in dashboard.items() if not k.startswith("__")}


def model_round_trip(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard decoded into Grafana's model and encoded again."""
    grafana_sdk()
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    model = Dashboard.from_json(without_import_metadata(dashboard))
    encoded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return encoded


def lost_in_model(given: Any, encoded: Any, path: str = "$") -> Iterator[str]:
    """Where `encoded` lacks or changed something of `given` (it may add defaults)."""
    if isinstance(given, dict):
        if not isinstance(encoded, dict):
            yield f"{path}: became {type(encoded).__name__}"
            return
        for key, value in given.items():
            if key not in encoded:
                yield f"{path}.{key}: not in Grafana's model"
            else:
                yield from lost_in_model(value, encoded[key], f"{path}.{key}")
    elif isinstance(given, list):
        if not isinstance(encoded, list) or len(given) != len(encoded):
            yield f"{path}: list changed"
            return
        for i, (a, b) in enumerate(zip(given, encoded, strict=True)):
            yield from lost_in_model(a, b, f"{path}[{i}]")
    elif given != encoded or type(given) is not type(encoded):
        yield f"{path}: {given!r} became {encoded!r}"


def test_dashboard_matches_grafanas_model() -> None:
    dashboard = load_dashboard()
    lost = list(lost_in_model(without_import_metadata(dashboard), model_round_trip(dashboard)))
    assert not lost, "\n".join(lost)


def test_the_model_check_catches_a_misspelt_option() -> None:
    dashboard = load_dashboard()
    broken = copy.deepcopy(dashboard)
    stat = next(p for p in broken["panels"] if p["type"] == "stat")
    stat["options"]["reduceOption"] = stat["options"].pop("reduceOptions")
    timeseries = next(p for p in broken["panels"] if p["type"] == "timeseries")
    timeseries["fieldConfig"]["defaults"]["custom"]["fillOpacty"] = 10
    broken["templating"]["list"][1]["includeAl"] = True
    lost = list(lost_in_model(without_import_metadata(broken), model_round_trip(broken)))
    assert len(lost) == 3, lost
    assert all(line.endswith("not in Grafana's model") for line in lost), lost


def test_panel_types_units_and_query_kinds_are_grafanas() -> None:
    grafana_sdk()
    from grafana_foundation_sdk.cog import runtime
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import prometheus, units
    from grafana_foundation_sdk.models.dashboard import Panel

    register_default_plugins()
    known_panels = set(runtime.Runtime().panelcfg_variants) | {"row"}
    known_units = {v for k, v in vars(units).items() if isinstance(v, str) and k[:1].isupper()}
    dashboard = load_dashboard()
    for panel in panels(dashboard):
        assert panel["type"] in known_panels, panel["type"]
        field_config = panel.get("fieldConfig", {})
        unit_values = [field_config.get("defaults", {}).get("unit")]
        for override in field_config.get("overrides", []):
            unit_values += [p["value"] for p in override["properties"] if p["id"] == "unit"]
        for unit in filter(None, unit_values):
            assert unit in known_units, (panel["title"], unit)
        if panel["type"] != "row":
            decoded = Panel.from_json(panel)
            assert decoded.targets, panel["title"]
            for query in decoded.targets:
                assert isinstance(query, prometheus.Dataquery), (panel["title"], query)


# -- provisioning examples ----------------------------------------------------------------------


def test_provisioning_examples() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "smtp-tls.yml").read_text())
    assert sources["apiVersion"] == 1
    [prometheus] = sources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["access"] == "proxy"
    assert prometheus["url"].startswith("http://")

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "smtp-tls.yml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    # the provider reads a directory; the example tells to put dashboard.json there
    assert "dashboard.json" in (PROVISIONING / "dashboards" / "smtp-tls.yml").read_text()
