"""The operator's monitoring artifacts: Prometheus rules (promtool) and the Grafana
dashboard name only metrics the service exports, or the rules' recorded series."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from service import metrics
from tests.conftest import REPOSITORY
from tests.deploy.test_deploy import manifests

RULES = REPOSITORY / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = REPOSITORY / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = REPOSITORY / "deploy" / "grafana" / "dashboard.json"
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created")}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                "group_right", "offset", "bool", "inf", "nan",
                # aggregation operators (followed by "by" or "without", not only "(")
                "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "group"}


def exported_names() -> set[str]:
    """Every sample name service/metrics.py's metrics export."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            names |= {value._name + suffix for suffix in SUFFIXES[value._type]}
    return names


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in braces or grouping clauses) or durations."""
    expression = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # string literals
    expression = re.sub(r"\{[^}]*\}", "", expression)  # label matchers
    expression = re.sub(r"\[[^\]]*\]", "", expression)  # ranges
    expression = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
                        r"\1", expression)  # grouping labels
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expression):
        following = expression[match.end():].lstrip()
        if following.startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_the_metric_name_parser_finds_selectors_only():
    assert metric_names('sum by (le) (rate(uq_a_bucket{x="b c"}[5m])) / on() uq:b > 0.5') == {
        "uq_a_bucket", "uq:b"}


def test_rules_and_dashboard_name_only_exported_metrics():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = exported_names() | recorded
    assert {"uq_feedback_total", "uq_drift_score", "uq_drift_alarm"} <= known
    used = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, f"rule {rule.get('record') or rule.get('alert')}")
    for expression in dashboard_expressions():
        for name in metric_names(expression):
            used.setdefault(name, "the dashboard")
    unknown = {name: where for name, where in used.items() if name not in known}
    assert not unknown, f"names the service does not export: {unknown}"
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {"UQDriftAlarm", "UQUnflaggedErrorAboveTarget", "UQFlaggedFractionJump",
            "UQServerErrors", "UQOverloaded"} <= alerts
    # the dashboard shows the drift, the live quality and the feedback metrics
    shown = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert {"uq_drift_score", "uq:live_accuracy:ratio_rate1h", "uq_feedback_total"} <= shown


def test_the_dashboard_is_importable_grafana_json():
    board = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] == "uq-service"
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]


@pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),
                    reason="promtool is not installed (apt-get install prometheus); "
                    "in CI, where .ci/run installs it, the test runs and fails instead")
def test_promtool_checks_and_tests_the_rules():
    for command in (["promtool", "check", "rules", str(RULES)],
                    ["promtool", "test", "rules", str(RULES_TEST)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_replicas_share_the_feedback_key_from_a_secret():
    container = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    [variable] = [v for v in container["env"] if v["name"] == "UQ_FEEDBACK_KEY"]
    assert variable["valueFrom"]["secretKeyRef"]["name"] == "uq-feedback-key"
    assert "UQ_FEEDBACK_KEY" not in manifests()["ConfigMap"]["data"]
