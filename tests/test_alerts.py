"""The alert rules in grafana/alerts.yml: promtool accepts them and their unit tests pass; every
alert is covered by a unit test that fires it and a series that does not, carries a severity, a
summary and a description naming the target and the value, and has a runbook entry.

Which metric names the rules use is checked against a live scrape of the exporter in
test_paging_e2e.py; this module holds the PromQL reading that check relies on.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "grafana" / "alerts.yml"
RULE_TESTS = ROOT / "grafana" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "alerts.md"
PROMTOOL = "/usr/bin/promtool"
SEVERITIES = ("warning", "critical")
PROMTOOL_TIMEOUT = 60

# -- reading PromQL -----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<braces>\{(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^}"'])*\})
  | (?P<brackets>\[[^\]]*\])
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<other>\S)
    """,
    re.VERBOSE,
)
# Words followed by a parenthesised list of label names.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"})


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(expr)]


def metric_selectors(expr: str) -> list[tuple[str, str]]:
    """Every metric selector in a PromQL expression: (metric name, its matchers or "").

    Function and aggregation names, label names (in braces and in by/on/... lists), keywords,
    strings, numbers and ranges are not metric names. A selector without a metric name
    (`{job="x"}`) is not listed.
    """
    tokens = _tokens(expr)
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind != "ident":
            i += 1
            continue
        if text in _LABEL_LISTS and following[1] == "(":
            i = tokens.index(("other", ")"), i) + 1  # label lists hold no parentheses
            continue
        if following[1] == "(" or text in _AGGREGATIONS or text in _KEYWORDS:
            i += 1
            continue
        matchers = following[1][1:-1] if following[0] == "braces" else ""
        found.append((text, matchers))
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in metric_selectors(expr)}


def numbers(expr: str) -> list[str]:
    """The numbers and durations written in an expression: its thresholds and windows."""
    got = []
    for kind, text in _tokens(expr):
        if kind == "number":
            got.append(text)
        elif kind == "brackets":
            got.append(text[1:-1])
    return got


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", [("up", "")]),
        ('a{job=~"$job",x="y{1}"} / b', [("a", 'job=~"$job",x="y{1}"'), ("b", "")]),
        (
            'sum by (result) (rate(c_total{j="k"}[$__rate_interval])) * 1000',
            [("c_total", 'j="k"')],
        ),
        (
            "x * on (job, instance) group_left (subject, issuer) y or z offset 5m unless w",
            [("x", ""), ("y", ""), ("z", ""), ("w", "")],
        ),
        (
            'count by (v) (m{v=~"SSL .*|TLS 1[.][01]"}) > bool 0',
            [("m", 'v=~"SSL .*|TLS 1[.][01]"')],
        ),
        ("time() - last_over_time(t[1h]) > 180", [("t", "")]),
        (
            'topk(3, q) and on () vector(1) or label_replace(p, "a", "b", "c", "d")',
            [
                ("q", ""),
                ("p", ""),
            ],
        ),
        ('{job=~"$job",domain!=""}', []),
    ],
)
def test_metric_selectors_reads_promql(expr: str, expected: list[tuple[str, str]]) -> None:
    assert metric_selectors(expr) == expected


# -- the rules ----------------------------------------------------------------------------------


# libyaml's loader where PyYAML has it: the unit test file is read by many tests.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _parsed(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)


def load_yaml(path: Path) -> Any:
    """The file parsed, once per run; each caller gets a copy of its own to change."""
    return copy.deepcopy(_parsed(path))


def rule_groups(path: Path = RULES) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(path)["groups"]
    return groups


def alerting_rules(path: Path = RULES) -> dict[str, dict[str, Any]]:
    """alert name -> rule, over every group."""
    rules: dict[str, dict[str, Any]] = {}
    for group in rule_groups(path):
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in rules, f"two alerts named {rule['alert']}"
                rules[rule["alert"]] = rule
    return rules


ALERTS = alerting_rules()


def promtool() -> str:
    path = shutil.which("promtool") or (PROMTOOL if os.access(PROMTOOL, os.X_OK) else None)
    need(path is not None, "promtool is not installed (apt-get install prometheus)")
    assert path is not None
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
    )


def test_promtool_check_rules_accepts_the_rules() -> None:
    done = run_promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(group["rules"]) for group in rule_groups())
    assert f"SUCCESS: {count} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_rule_groups_and_names() -> None:
    names = [group["name"] for group in rule_groups()]
    assert names == ["smtp-tls-endpoints", "smtp-tls-mail-domains", "smtp-tls-exporter"]
    for name in ALERTS:
        assert re.fullmatch(r"SmtpTls[A-Z][A-Za-z0-9]+", name), name


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_has_severity_for_and_annotations_naming_target_and_value(name: str) -> None:
    rule = ALERTS[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    assert isinstance(rule.get("for"), str), "state `for:` explicitly, also when it is 0m"
    annotations = rule.get("annotations", {})
    summary, description = annotations.get("summary", ""), annotations.get("description", "")
    who = ("$labels.target", "$labels.domain", "$labels.instance")
    what = ("$value", "$labels.reason", "$labels.version", "$labels.mode", "$labels.status")
    for text in (summary, description):
        assert any(w in text for w in who), f"names no target or instance: {text!r}"
    assert any(w in description for w in what), f"description names no value: {description!r}"
    assert all(m.startswith("smtp_tls_") for m in metric_names(rule["expr"])), rule["expr"]


# -- the unit tests cover every alert ---------------------------------------------------------


def rule_test_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULE_TESTS)["tests"]
    return groups


def _identity(labels: dict[str, Any]) -> str:
    """What one alert is about: its target; else its mail domain (and MX host); else, for the
    exporter's own alerts, its instance."""
    if labels.get("target"):
        return str(labels["target"])
    if labels.get("domain"):
        return "/".join(str(labels[k]) for k in ("domain", "mx") if labels.get(k))
    return str(labels.get("instance"))


def _series_identities(group: dict[str, Any]) -> set[str]:
    found = set()
    for item in group["input_series"]:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', item["series"]))
        found.add(_identity(labels))
    return found


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_has_a_unit_test_that_fires_it_and_a_series_that_does_not(name: str) -> None:
    fired_somewhere = False
    quiet_somewhere = False
    for group in rule_test_groups():
        cases = [c for c in group.get("alert_rule_test", []) if c["alertname"] == name]
        fired = {_identity(a["exp_labels"]) for c in cases for a in c.get("exp_alerts") or []}
        if fired:
            fired_somewhere = True
            # a series of the same test, evaluated, never listed: it must not fire
            quiet_somewhere |= bool(_series_identities(group) - fired)
    assert fired_somewhere, f"no unit test in {RULE_TESTS.name} expects {name} to fire"
    assert quiet_somewhere, f"no unit test of {name} has a series that must not fire it"


def _alone_with_its_tests(tmp_path: Path, name: str, expr: str) -> Path:
    """alerts.yml with one alert only, its expression replaced, and its unit tests only (rules
    do not depend on each other); returns the unit test file to run."""
    groups = []
    for group in rule_groups():
        rules = [rule for rule in group["rules"] if rule.get("alert") == name]
        for rule in rules:
            rule["expr"] = expr
        if rules:
            groups.append({**group, "rules": rules})
    (tmp_path / RULES.name).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tests = load_yaml(RULE_TESTS)
    kept = []
    for group in tests["tests"]:
        cases = [c for c in group.get("alert_rule_test", []) if c["alertname"] == name]
        if cases:
            kept.append({**group, "alert_rule_test": cases})
    tests["tests"] = kept
    path = tmp_path / RULE_TESTS.name
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return path


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_unit_tests_fail_when_the_alert_is_broken(tmp_path: Path, name: str) -> None:
    """An alert that never fires, or fires for anything, fails its unit tests."""
    original = ALERTS[name]["expr"]
    done = run_promtool("test", "rules", str(_alone_with_its_tests(tmp_path, name, original)))
    assert done.returncode == 0, f"{name} alone fails its tests:\n{done.stdout}{done.stderr}"
    for broken in ("vector(1) > 1", f"({original}) or vector(1)"):
        path = _alone_with_its_tests(tmp_path, name, broken)
        done = run_promtool("test", "rules", str(path))
        output = done.stdout + done.stderr
        assert done.returncode == 1, f"{name} with expr {broken!r} passed:\n{output}"
        assert f"alertname: {name}," in output, output


# -- the runbook ------------------------------------------------------------------------------


def runbook_sections() -> dict[str, str]:
    """`### Name` heading -> the text up to the next heading, from docs/alerts.md."""
    text = RUNBOOK.read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.MULTILINE)
    sections = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        if heading.startswith("### "):
            sections[heading[4:].strip()] = body
    return sections


def test_runbook_has_one_entry_per_alert() -> None:
    assert sorted(runbook_sections()) == sorted(ALERTS)


def _thresholds(expr: str) -> Iterator[str]:
    for value in numbers(expr):
        if value not in ("0", "1"):  # `== 0`, `> 1`: the shape of the test, not a threshold
            yield value


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_runbook_entry_states_severity_for_and_thresholds(name: str) -> None:
    section = runbook_sections()[name]
    rule = ALERTS[name]
    assert f"**Severity:** {rule['labels']['severity']}" in section
    assert f"**For:** {rule['for']}" in section
    for value in _thresholds(rule["expr"]):
        assert re.search(rf"(?<![\w.]){re.escape(value)}(?!\w|\.\d)", section), (
            f"the runbook of {name} does not state the threshold {value}"
        )
