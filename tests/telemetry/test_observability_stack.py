"""The observability stack: docker-compose.yml, telemetry/, grafana/ and the Dockerfile.

Proved without Docker:

* promtool accepts telemetry/prometheus.yml and telemetry/rules.yml, and the promtool
  unit tests of telemetry/rules_test.yml pass (every alert firing and not firing);
* docker-compose accepts docker-compose.yml (`config -q`), which pins its images, binds
  every published port to 127.0.0.1 and mounts what the provisioning files expect;
* the Grafana provisioning and dashboard are consistent and structurally valid;
* a real run of the demo workload (`python -m rh_agents.demo --serve`, on loopback,
  spans written to a file) exposes /metrics that `promtool check metrics` finds no
  problem in, and a real Prometheus scraping it (configured from telemetry/prometheus.yml)
  answers every PromQL expression of the dashboard and of the rules (alerts without
  their threshold) with at least one series; exemplars are stored for exactly the
  dashboard queries that enable them, and their trace ids are those of exported spans.
  The panels that answered are written to `panels.md` in the test's temporary directory
  and printed (`pytest -s`, or `-rP`).

Tests that need the `prometheus`, `promtool` or `docker-compose` binaries skip when one
is missing, except in CI (the CI variable set to 1, true or yes, in any case), where a
missing binary is a failure (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from ci_env import missing
from prometheus_server import (
    DemoWorkload,
    PrometheusServer,
    find_binary,
    free_loopback_port,
    poll,
    stop_process,
)

REPO = Path(__file__).resolve().parents[2]
TELEMETRY = REPO / "telemetry"
GRAFANA = REPO / "grafana"
DASHBOARD_PATH = GRAFANA / "dashboards" / "rh_agents.json"
COMPOSE_PATH = REPO / "docker-compose.yml"

# ------------------------------------------------------------------------------------
# The metrics rh_agents exposes (prometheus_client names: counters end in _total,
# histograms have _bucket/_sum/_count).
# ------------------------------------------------------------------------------------

METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rh_agents_events_total": ("counter", ("operation", "name", "outcome")),
    "rh_agents_event_errors_total": ("counter", ("operation", "name", "error_type")),
    "rh_agents_event_duration_seconds": ("histogram", ("operation", "name", "outcome")),
    "rh_agents_retries_total": ("counter", ("operation", "name")),
    "rh_agents_tokens_total": ("counter", ("name", "model", "token_type")),
    "rh_agents_circuit_breaker_trips_total": ("counter", ("breaker",)),
    "rh_agents_circuit_breaker_rejections_total": ("counter", ("breaker",)),
    "rh_agents_circuit_breaker_state": ("gauge", ("breaker",)),
    "rh_agents_circuit_breaker_transitions_total": ("counter", ("breaker", "to_state")),
    "rh_agents_circuit_breaker_open_seconds_total": ("counter", ("breaker",)),
    "rh_agents_final_outcomes_total": ("counter", ("operation", "name", "outcome")),
    "rh_agents_final_errors_total": ("counter", ("operation", "name", "error_type")),
    "rh_agents_workflows_total": ("counter", ("name", "outcome")),
    "rh_agents_model_duration_seconds": ("histogram", ("name", "model")),
    "rh_agents_journal_write_duration_seconds": ("histogram", ("backend",)),
    "rh_agents_event_loop_lag_seconds": ("histogram", ()),
    "rh_agents_spans_exported_total": ("counter", ("exporter",)),
    "rh_agents_spans_export_failed_total": ("counter", ("exporter",)),
    "rh_agents_spans_dropped_total": ("counter", ("exporter", "reason")),
    "rh_agents_semaphore_wait_seconds": ("histogram", ("group",)),
    "rh_agents_parallel_groups_total": ("counter", ("group", "status")),
    "rh_agents_parallel_group_duration_seconds": ("histogram", ("group", "status")),
    "rh_agents_parallel_in_flight": ("gauge", ("group",)),
    "rh_agents_parallel_queued": ("gauge", ("group",)),
    "rh_agents_parallel_max_workers": ("gauge", ("group",)),
}


# Kept for dashboards built on it, used by none of ours: the same count as
# rh_agents_circuit_breaker_transitions_total{to_state="open"}.
UNCHARTED = {"rh_agents_circuit_breaker_trips_total"}

# Series the dashboard charts that are not rh_agents' own: Prometheus' scrape health and
# prometheus_client's process collector (default registry, Linux).
OTHER_SERIES: dict[str, tuple[str, ...]] = {
    "up": ("job", "instance"),
    "process_cpu_seconds_total": ("job", "instance"),
    "process_resident_memory_bytes": ("job", "instance"),
    "process_open_fds": ("job", "instance"),
}


def exposed_series_names() -> dict[str, tuple[str, ...]]:
    """Every series name the metrics above produce, with its labels (without `le`)."""
    names: dict[str, tuple[str, ...]] = {}
    for metric, (kind, labels) in METRICS.items():
        if kind == "histogram":
            names[f"{metric}_bucket"] = (*labels, "le")
            names[f"{metric}_sum"] = labels
            names[f"{metric}_count"] = labels
        else:
            names[metric] = labels
    return names


# ------------------------------------------------------------------------------------
# Binaries
# ------------------------------------------------------------------------------------


def require_binary(name: str) -> str:
    """The path of ``name``; skip without it, or fail in CI (see ``ci_env.running_in_ci``)."""
    path = find_binary(name)
    if path is None:
        package = "docker-compose" if name == "docker-compose" else "prometheus"
        missing(
            f"`{name}` is not installed (Debian: apt-get install -y {package}); .ci/run installs it"
        )
    return path


@pytest.mark.parametrize(
    ("ci", "fails"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("no", False),
    ],
)
def test_missing_binary_fails_in_ci_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, fails: bool
) -> None:
    monkeypatch.setitem(globals(), "find_binary", lambda name: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(expected) as info:
        require_binary("promtool")
    assert "`promtool` is not installed" in str(info.value)


def run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# ------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_PATH)
    return data


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(TELEMETRY / "rules.yml")
    return data


def all_rules(rules_doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules_doc["groups"] for rule in group["rules"]]


def recording_rule_names(rules_doc: dict[str, Any]) -> set[str]:
    return {r["record"] for r in all_rules(rules_doc) if "record" in r}


def leaf_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row (also those nested in collapsed rows)."""
    out: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def all_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        out.append(panel)
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
    return out


def dashboard_targets(dash: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in leaf_panels(dash) for target in panel["targets"]]


VARIABLE_VALUES = {
    "$__rate_interval": "15s",
    "$__range": "5m",
    "$job": ".*",
    "$group": ".*",
    "$name": ".*",
}


def substitute(expr: str) -> str:
    """A dashboard expression as Grafana would send it with every variable on All."""
    for variable, value in VARIABLE_VALUES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


# ------------------------------------------------------------------------------------
# promtool
# ------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "check", "config", str(TELEMETRY / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "check", "rules", str(TELEMETRY / "rules.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "test", "rules", str(TELEMETRY / "rules_test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_the_demo(rules: dict[str, Any]) -> None:
    config = load_yaml(TELEMETRY / "prometheus.yml")
    jobs = {sc["job_name"]: sc for sc in config["scrape_configs"]}
    assert "rh_agents" in jobs
    targets = [t for group in jobs["rh_agents"]["static_configs"] for t in group["targets"]]
    assert targets == ["demo:9464"]
    assert config["rule_files"] == ["rules.yml"]


def test_every_alert_has_severity_summary_description_and_tests(rules: dict[str, Any]) -> None:
    alerts = [r for r in all_rules(rules) if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert names == {
        "RhAgentsTargetDown",
        "RhAgentsWorkflowFailureRatio",
        "RhAgentsHighFailureRatio",
        "RhAgentsHighAttemptFailureRatio",
        "RhAgentsCircuitBreakerOpen",
        "RhAgentsHighRetryRatio",
        "RhAgentsSemaphoreWaitHigh",
        "RhAgentsEventLoopLagHigh",
        "RhAgentsSpansLost",
    }
    # Pages follow what callers got (final outcomes) and whether anything is measured
    # at all; failed attempts, retries, breakers, saturation and telemetry only warn.
    critical = {a["alert"] for a in alerts if a["labels"]["severity"] == "critical"}
    assert critical == {
        "RhAgentsTargetDown",
        "RhAgentsWorkflowFailureRatio",
        "RhAgentsHighFailureRatio",
    }
    for alert in alerts:
        expr = alert["expr"]
        if alert["alert"] in critical - {"RhAgentsTargetDown"}:
            assert "final" in expr or "workflow" in expr, alert["alert"]
            assert "rh_agents_event" not in expr, alert["alert"]
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"].strip(), alert["alert"]
        assert alert["annotations"]["description"].strip(), alert["alert"]

    # rules_test.yml has, for every alert, a case where it fires and one where it does not.
    tests = load_yaml(TELEMETRY / "rules_test.yml")
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == names
    assert silent == names


# ------------------------------------------------------------------------------------
# docker-compose.yml and Dockerfile
# ------------------------------------------------------------------------------------


def test_docker_compose_config_is_accepted() -> None:
    docker_compose = require_binary("docker-compose")
    result = run([docker_compose, "-f", str(COMPOSE_PATH), "config", "-q"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_images_are_pinned_and_ports_are_loopback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"jaeger", "prometheus", "grafana", "demo"} <= set(services)
    for name, service in services.items():
        image = service.get("image", "")
        if "build" not in service:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: unpinned {image!r}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not loopback"
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    jaeger_ports = {p.split(":", 1)[1] for p in services["jaeger"]["ports"]}
    assert {"16686:16686", "4317:4317", "4318:4318"} <= jaeger_ports
    published = {p.split(":")[1] for s in services.values() for p in s.get("ports", [])}
    assert {"3000", "9090", "16686", "9464"} <= published


def test_compose_prometheus_has_exemplars_and_readonly_telemetry(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "./telemetry:/etc/prometheus:ro" in prometheus["volumes"]
    assert "healthcheck" in prometheus


def test_compose_demo_service(compose: dict[str, Any]) -> None:
    demo = compose["services"]["demo"]
    assert demo["build"]["dockerfile"] == "Dockerfile"
    assert demo["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert demo["environment"]["OTEL_SERVICE_NAME"] == "rh-agents-demo"
    command = demo["command"]
    assert command[:4] == ["python", "-m", "rh_agents.demo", "--serve"]
    assert command[command.index("--metrics-port") + 1] == "9464"
    assert command[command.index("--metrics-addr") + 1] == "0.0.0.0"


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318" in text
    assert "OTEL_SERVICE_NAME=rh-agents-demo" in text
    cmd = re.search(r"^CMD (\[.*\])\s*$", text, re.M)
    assert cmd is not None
    assert json.loads(cmd.group(1)) == [
        "python",
        "-m",
        "rh_agents.demo",
        "--serve",
        "--metrics-port",
        "9464",
        "--metrics-addr",
        "0.0.0.0",
    ]


def test_compose_grafana_anonymous_viewer_and_admin_credentials(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "GF_SECURITY_ADMIN_USER" in env
    assert "GF_SECURITY_ADMIN_PASSWORD" in env


# ------------------------------------------------------------------------------------
# Grafana provisioning
# ------------------------------------------------------------------------------------


def mount_target(compose_doc: dict[str, Any], service: str, source: str) -> str:
    for volume in compose_doc["services"][service]["volumes"]:
        parts = str(volume).split(":")
        if parts[0] == source:
            return parts[1]
    raise AssertionError(f"{service} does not mount {source}")


def test_provisioning_references_exist(compose: dict[str, Any], dashboard: dict[str, Any]) -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "datasources.yml")
    by_uid = {ds["uid"]: ds for ds in datasources["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["jaeger"]["type"] == "jaeger"
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["jaeger"]["url"] == "http://jaeger:16686"
    # Exemplars link to a data source that exists, by the trace_id label.
    destinations = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations, "no exemplar destinations"
    for destination in destinations:
        assert destination["name"] == "trace_id"
        assert destination["datasourceUid"] in by_uid
        assert by_uid[destination["datasourceUid"]]["type"] == "jaeger"

    # The provisioning folder is mounted where Grafana reads it, and the dashboard
    # provider points at the folder where the dashboards are mounted.
    assert mount_target(compose, "grafana", "./grafana/provisioning") == "/etc/grafana/provisioning"
    dashboards_dir = mount_target(compose, "grafana", "./grafana/dashboards")
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    assert [p["options"]["path"] for p in providers["providers"]] == [dashboards_dir]
    assert providers["providers"][0]["type"] == "file"
    assert any((GRAFANA / "dashboards").glob("*.json"))
    home = compose["services"]["grafana"]["environment"].get(
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    )
    if home:
        assert home == f"{dashboards_dir}/{DASHBOARD_PATH.name}"

    # The dashboard's data source variable defaults to the provisioned Prometheus.
    datasource_var = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert datasource_var["current"]["value"] in by_uid


# ------------------------------------------------------------------------------------
# Dashboard structure
# ------------------------------------------------------------------------------------

DS_VAR = {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_top_level(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "rh-agents"
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert dashboard["schemaVersion"] >= 39
    assert dashboard.get("id") is None


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "group", "name"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DS_VAR
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["allValue"] == ".*"
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        assert query.startswith("label_values(") and query.endswith(f", {name})")


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in leaf_panels(dashboard):
        assert panel.get("datasource") == DS_VAR, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource") == DS_VAR, (panel["title"], target["refId"])


def test_panel_ids_titles_units_and_ref_ids(dashboard: dict[str, Any]) -> None:
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
    for panel in leaf_panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{panel['title']}: duplicate refIds"


def test_grid_positions_do_not_overlap(dashboard: dict[str, Any]) -> None:
    occupied: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert w > 0 and h > 0, panel["title"]
        assert 0 <= x and x + w <= 24, f"{panel['title']} leaves the 24-column grid"
        assert y >= 0
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                other = occupied.setdefault((cx, cy), panel["title"])
                assert other == panel["title"], f"{panel['title']} overlaps {other}"


def row_sections(dash: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The panels under each row (by position), by row title."""
    sections: dict[str, list[dict[str, Any]]] = {}
    current = ""
    for panel in sorted(dash["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = panel["title"]
            sections[current] = []
        else:
            sections[current].append(panel)
    return sections


def row_queries(dash: dict[str, Any], row: str) -> list[str]:
    return [t["expr"] for p in row_sections(dash)[row] for t in p["targets"]]


def test_dashboard_rows_answer_the_on_call_questions(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Is it up?",
        "Is it failing?",
        "Is it slow?",
        "Is it saturated?",
        "Resilience",
        "Is telemetry healthy?",
        "Tokens",
    ]
    sections = row_sections(dashboard)
    assert {p["type"] for p in sections["Is it up?"]} == {"stat"}
    up = row_queries(dashboard, "Is it up?")
    assert 'sum(up{job=~"$job"})' in up
    assert 'absent(up{job=~"$job"}) or vector(0)' in up

    failing = row_queries(dashboard, "Is it failing?")
    assert any(q.startswith("1 - job_name:rh_agents_workflow_failures:") for q in failing)
    assert any(q.startswith("1 - job_operation_name:rh_agents_final_failures:") for q in failing)
    table = next(p for p in sections["Is it failing?"] if p["type"] == "table")
    assert table["targets"][0]["instant"] is True
    assert table["targets"][0]["expr"].startswith(
        "topk(10, sum by (operation, name, error_type) (increase(rh_agents_final_errors_total{"
    )

    # Latency split by operation, so an agent's time (its children's included) does
    # not drown the single calls; and per model.
    slow = row_queries(dashboard, "Is it slow?")
    for operation in ("chat", "execute_tool", "invoke_agent"):
        assert [q for q in slow if f'operation="{operation}"' in q], operation
    assert any("rh_agents_model_duration_seconds_bucket" in q and "(model, le)" in q for q in slow)
    assert "heatmap" in {p["type"] for p in sections["Is it slow?"]}

    saturated = row_queries(dashboard, "Is it saturated?")
    assert any(
        "rh_agents_parallel_in_flight" in q
        and "/ sum by (group) (rh_agents_parallel_max_workers" in q
        for q in saturated
    )
    for metric in (
        "rh_agents_parallel_queued",
        "rh_agents_semaphore_wait_seconds_bucket",
        "rh_agents_event_loop_lag_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ):
        assert any(metric in q for q in saturated), metric

    # Breakers: counters, through increase()/rate(), and the sampled state beside them.
    resilience = row_queries(dashboard, "Resilience")
    assert any("increase(rh_agents_circuit_breaker_transitions_total{" in q for q in resilience)
    assert any("rate(rh_agents_circuit_breaker_open_seconds_total{" in q for q in resilience)
    assert "state-timeline" in {p["type"] for p in sections["Resilience"]}

    healthy = row_queries(dashboard, "Is telemetry healthy?")
    for metric in (
        "rh_agents_spans_exported_total",
        "rh_agents_spans_export_failed_total",
        "rh_agents_spans_dropped_total",
        "rh_agents_journal_write_duration_seconds_bucket",
    ):
        assert any(metric in q for q in healthy), metric

    token_queries = row_queries(dashboard, "Tokens")
    assert [q.split("(rate(")[0] for q in token_queries] == [
        "sum by (model, token_type) ",
        "sum by (name, token_type) ",
    ]
    assert all("rh_agents_tokens_total{" in q for q in token_queries)
    latency_quantiles = next(p for p in sections["Is it slow?"] if "p99" in p["title"])
    assert len(latency_quantiles["targets"]) == 3
    assert all(t["exemplar"] for t in latency_quantiles["targets"])
    for panel in leaf_panels(dashboard):
        if panel["type"] == "heatmap":
            assert all(t["format"] == "heatmap" for t in panel["targets"]), panel["title"]


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
BARE_METRIC = re.compile(r"\b((?:[a-z_]+:)?rh_agents_[a-zA-Z0-9_:]*)\b(?!\s*\{)")
RANGE = re.compile(r"\[([^\]]*)\]")
KNOWN_LABELS = (
    "instance",
    "error_type",
    "operation",
    "outcome",
    "breaker",
    "status",
    "group",
    "name",
    "job",
    "le",
)


def recorded_labels(record: str) -> tuple[str, ...]:
    """The labels kept by a recording rule, from its `level` (job_operation_name:...)."""
    level = record.split(":", 1)[0]
    labels: list[str] = []
    while level:
        for label in KNOWN_LABELS:
            if level == label or level.startswith(label + "_"):
                labels.append(label)
                level = level[len(label) + 1 :]
                break
        else:
            raise AssertionError(f"cannot parse the level of {record!r}")
    return tuple(labels)


def variable_problems(
    expr: str,
    where: str,
    series_labels: dict[str, tuple[str, ...]],
    allowed_ranges: tuple[str, ...] = ("$__rate_interval",),
) -> list[str]:
    """What is wrong with how ``expr`` uses the dashboard variables (empty when nothing)."""
    problems: list[str] = []
    if BARE_METRIC.search(SELECTOR.sub("", expr)):
        problems.append(f"{where}: metric without a label selector in {expr!r}")
    for range_ in RANGE.findall(expr):
        # $__range: a table's instant query over the dashboard's time range.
        if range_ not in allowed_ranges:
            problems.append(f"{where}: range [{range_}] instead of [$__rate_interval]")
    selectors = SELECTOR.findall(expr)
    if not selectors:
        problems.append(f"{where}: no selector in {expr!r}")
    for metric, matchers in selectors:
        if metric not in series_labels:
            problems.append(f"{where}: unknown metric {metric}")
            continue
        labels = series_labels[metric]
        required = ["job"] + [label for label in ("name", "group") if label in labels]
        for label in required:
            if f'{label}=~"${label}"' not in matchers:
                problems.append(f'{where}: {metric} is not filtered by {label}=~"${label}"')
        for variable in re.findall(r"\$(\w+)", matchers):
            if variable not in required:
                problems.append(f"{where}: ${variable} does not apply to {metric}")
    return problems


def series_labels_of(rules_doc: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    labels = {name: ("job", *lbls) for name, lbls in exposed_series_names().items()}
    labels.update(OTHER_SERIES)
    for record in recording_rule_names(rules_doc):
        labels[record] = recorded_labels(record)
    return labels


def test_every_query_uses_the_variables_and_rate_interval(
    dashboard: dict[str, Any], rules: dict[str, Any]
) -> None:
    series_labels = series_labels_of(rules)
    problems: list[str] = []
    for panel, target in dashboard_targets(dashboard):
        where = f"{panel['title']}/{target['refId']}"
        instant = bool(target.get("instant"))
        ranges = ("$__rate_interval", "$__range") if instant else ("$__rate_interval",)
        problems += variable_problems(target["expr"], where, series_labels, ranges)
        if "rate(" in target["expr"] or "increase(" in target["expr"]:
            if not any(f"[{r}]" in target["expr"] for r in ranges):
                problems.append(f"{where}: rate/increase without [$__rate_interval]")
    assert not problems, "\n".join(problems)


def test_queries_only_use_exposed_metrics_and_cover_all_of_them(
    dashboard: dict[str, Any], rules: dict[str, Any]
) -> None:
    exposed = exposed_series_names()
    records = recording_rule_names(rules)
    used: set[str] = set()
    expressions = [t["expr"] for _, t in dashboard_targets(dashboard)]
    expressions += [r["expr"] for r in all_rules(rules)]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            expressions.append(query["query"] if isinstance(query, dict) else query)
    for expr in expressions:
        for metric in re.findall(r"\b((?:[a-z_]+:)?rh_agents_[a-zA-Z0-9_:]*)", expr):
            assert metric in exposed or metric in records, f"unknown metric {metric} in {expr!r}"
            used.add(metric)
    for metric, (kind, _) in METRICS.items():
        names = {f"{metric}_bucket"} if kind == "histogram" else {metric}
        assert names & used or metric in UNCHARTED, f"{metric} is used by no panel or rule"


def test_recording_rules_used_by_the_dashboard_exist(
    dashboard: dict[str, Any], rules: dict[str, Any]
) -> None:
    records = recording_rule_names(rules)
    used = {
        m
        for _, target in dashboard_targets(dashboard)
        for m in re.findall(r"\b[a-z_]+:rh_agents_[a-zA-Z0-9_:]*", target["expr"])
    }
    assert used, "the dashboard uses no recording rule"
    assert used <= records


# ------------------------------------------------------------------------------------
# A real Prometheus scraping a real run of the demo workload
# ------------------------------------------------------------------------------------

# How long polling waits for Prometheus: its first scrape comes ~5 s after it starts
# (targets reach the scrape manager in 5 s ticks), then every second.
SCRAPE_TIMEOUT = 45.0
# An exemplar is recorded right after its span ends (same process, same clock).
SPAN_END_TOLERANCE = 5.0
# A duration exemplar and its span measure the same interval on the same clock; what
# separates them is the telemetry's own work around the span (the criterion).
DURATION_TOLERANCE = 0.05


def assert_stopped(pids: list[int]) -> None:
    """Every process in ``pids`` is gone (stopped and reaped)."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    assert not alive, f"processes still running after the test: {alive}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorkload]:
    """The demo workload: /metrics on a loopback port, spans to a JSON-lines file."""
    workload = DemoWorkload(tmp_path_factory.mktemp("demo"), speed=0.2)
    try:
        yield workload.start()
    finally:
        workload.stop()
        assert_stopped(workload.pids)


@pytest.fixture(scope="module")
def prometheus(demo: DemoWorkload) -> Iterator[PrometheusServer]:
    require_binary("prometheus")
    server = PrometheusServer([demo.address], watch=demo.check_running)
    try:
        server.start()
        # Two scrapes at least, so that rate() has two samples.
        server.wait_for(
            lambda: server.query('count_over_time(up{job="rh_agents"}[1m]) >= 2'),
            timeout=SCRAPE_TIMEOUT,
            description="two scrapes of the demo",
        )
        yield server
    finally:
        server.stop()
        assert_stopped(server.pids)


def metric_families(exposition: str) -> dict[str, str]:
    """The rh_agents metric families of a text exposition, by name, with their type."""
    families = dict(re.findall(r"^# TYPE (rh_agents_\w+) (\w+)$", exposition, re.M))
    return {name: kind for name, kind in families.items() if not name.endswith("_created")}


def complete_exposition(demo: DemoWorkload) -> str:
    """The demo's /metrics once a round has been recorded: every family is exposed then."""

    def complete() -> str | None:
        text = demo.metrics_text()
        return text if set(METRICS) <= set(metric_families(text)) else None

    return poll(
        complete,
        timeout=30,
        description="every rh_agents metric on the demo's /metrics",
        check=demo.check_running,
    )


def test_promtool_check_metrics_finds_no_problem_in_the_demo_metrics(
    demo: DemoWorkload,
) -> None:
    promtool = require_binary("promtool")
    exposition = complete_exposition(demo)
    # promtool 2.x lints the Prometheus text format (what /metrics sends without an
    # OpenMetrics Accept header; Prometheus itself scrapes OpenMetrics, with exemplars).
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not problems, problems or f"exit {result.returncode}"


@pytest.mark.slow
def test_prometheus_scrapes_the_demo(prometheus: PrometheusServer, demo: DemoWorkload) -> None:
    targets = prometheus.targets_health()
    assert [t["scrapeUrl"] for t in targets] == [demo.metrics_url]
    assert targets[0]["health"] == "up", targets[0].get("lastError")
    assert targets[0]["labels"]["job"] == "rh_agents"
    assert targets[0]["labels"]["service"] == "rh-agents-demo"
    # The dashboard and rules know every metric the library exposes, and no other.
    assert metric_families(complete_exposition(demo)) == {
        name: kind for name, (kind, _) in METRICS.items()
    }

    def unscraped() -> list[str]:
        return [
            s for s in exposed_series_names() if not prometheus.query(f'{s}{{job="rh_agents"}}')
        ]

    with contextlib.suppress(TimeoutError):
        prometheus.wait_for(
            lambda: not unscraped(), timeout=SCRAPE_TIMEOUT, description="every series"
        )
    assert not unscraped(), f"not scraped: {unscraped()}"


def panel_rows(dash: dict[str, Any]) -> dict[int, str]:
    """The title of the row each leaf panel sits under, by panel id."""
    rows: dict[int, str] = {}
    current = ""
    for panel in sorted(dash["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = panel["title"]
            for nested in panel.get("panels", []):
                rows[nested["id"]] = current
        else:
            rows[panel["id"]] = current
    return rows


@dataclass(frozen=True)
class StoredExemplar:
    """An exemplar as /api/v1/query_exemplars returns it."""

    trace_id: str
    timestamp: float
    value: float
    series: Mapping[str, str]


@dataclass
class TargetResult:
    """What Prometheus answered to one query of the dashboard."""

    row: str
    panel: str
    ref_id: str
    expr: str
    exemplar_enabled: bool
    series: int = 0
    exemplars: list[StoredExemplar] = field(default_factory=list)
    # Exemplars whose trace is not (or not plausibly) in the demo's span file.
    unexported: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.panel}/{self.ref_id}"

    @property
    def answered(self) -> bool:
        return self.series > 0 and (bool(self.exemplars) or not self.exemplar_enabled)


def evaluate_dashboard(
    prom: PrometheusServer, dash: dict[str, Any], since: float
) -> list[TargetResult]:
    """Every query of the dashboard, its variables on All, and its stored exemplars."""
    rows = panel_rows(dash)
    now = time.time()
    results = []
    for panel, target in dashboard_targets(dash):
        expr = substitute(target["expr"])
        exemplars = [
            StoredExemplar(
                e["labels"].get("trace_id", ""),
                float(e["timestamp"]),
                float(e["value"]),
                s["seriesLabels"],
            )
            for s in prom.query_exemplars(expr, since, now + 1)
            for e in s["exemplars"]
        ]
        results.append(
            TargetResult(
                row=rows[panel["id"]],
                panel=panel["title"],
                ref_id=target["refId"],
                expr=expr,
                exemplar_enabled=bool(target.get("exemplar")),
                series=len(prom.query(expr)),
                exemplars=exemplars,
            )
        )
    return results


def expected_span_name(series: Mapping[str, str]) -> str | None:
    """The name of the span an exemplar of ``series`` comes from (see rh_agents.telemetry)."""
    if "operation" in series and "name" in series:
        return f"{series['operation']} {series['name']}"
    if "group" in series:
        return f"parallel {series['group']}"
    return None


def exemplar_problem(
    exemplar: StoredExemplar, spans_by_trace: Mapping[str, list[dict[str, Any]]]
) -> str | None:
    """Why ``exemplar`` does not point at an exported span, or None when it does."""
    spans = spans_by_trace.get(exemplar.trace_id)
    if not spans:
        return f"trace {exemplar.trace_id or '(no trace_id)'} is not in the span file"
    name = expected_span_name(exemplar.series)
    if name is None:
        return None
    # A duration's exemplar is the span's duration, measured on the same (real) clock.
    duration = exemplar.series.get("__name__", "").endswith("_duration_seconds_bucket")
    for span in spans:
        end = span["end_time_unix_nano"] / 1e9
        if span["name"] != name or abs(end - exemplar.timestamp) > SPAN_END_TOLERANCE:
            continue
        seconds = (span["end_time_unix_nano"] - span["start_time_unix_nano"]) / 1e9
        if not duration or abs(seconds - exemplar.value) <= DURATION_TOLERANCE:
            return None
    lasting = f" lasting {exemplar.value:.3f} s" if duration else ""
    return (
        f"trace {exemplar.trace_id} has no span {name!r}{lasting} ending near "
        f"{exemplar.timestamp:.3f}"
    )


def test_exemplar_problem() -> None:
    span = {
        "name": "chat stub-llm",
        "trace_id": "a" * 32,
        "start_time_unix_nano": 99 * 10**9,
        "end_time_unix_nano": 100 * 10**9,
    }
    traces = {"a" * 32: [span]}

    def exemplar(trace_id: str, timestamp: float, **series: str) -> StoredExemplar:
        return StoredExemplar(trace_id, timestamp, 1.0, series)

    assert (
        exemplar_problem(exemplar("a" * 32, 100.2, operation="chat", name="stub-llm"), traces)
        is None
    )
    assert exemplar_problem(exemplar("a" * 32, 100.2, breaker="search-api"), traces) is None
    problem = exemplar_problem(exemplar("b" * 32, 100.2, operation="chat", name="stub-llm"), traces)
    assert problem == f"trace {'b' * 32} is not in the span file"
    problem = exemplar_problem(exemplar("a" * 32, 100.2, group="chunks"), traces)
    assert problem is not None and "no span 'parallel chunks'" in problem
    problem = exemplar_problem(exemplar("a" * 32, 200.0, operation="chat", name="stub-llm"), traces)
    assert problem is not None and "ending near 200.000" in problem
    # A duration exemplar must be the span's duration (here 1 s), not another clock's.
    bucket = "rh_agents_event_duration_seconds_bucket"
    lasting = StoredExemplar(
        "a" * 32, 100.2, 1.0, {"__name__": bucket, "operation": "chat", "name": "stub-llm"}
    )
    assert exemplar_problem(lasting, traces) is None
    simulated = StoredExemplar(
        "a" * 32, 100.2, 5.0, {"__name__": bucket, "operation": "chat", "name": "stub-llm"}
    )
    problem = exemplar_problem(simulated, traces)
    assert problem is not None and "lasting 5.000 s" in problem


def spans_by_trace(demo: DemoWorkload) -> dict[str, list[dict[str, Any]]]:
    traces: dict[str, list[dict[str, Any]]] = {}
    for span in demo.exported_spans():
        traces.setdefault(span["trace_id"], []).append(span)
    return traces


def panel_report(results: list[TargetResult], elapsed: float, spans: int) -> str:
    """The table of the closing note: which panels answered, with exemplars or not."""
    lines = [
        f"Dashboard queries against a real Prometheus scraping the demo: all answered "
        f"{elapsed:.1f} s after the demo started ({spans} spans exported)."
        if all(r.answered for r in results)
        else f"Dashboard queries after {elapsed:.1f} s (NOT all answered; {spans} spans):",
        "",
        "| Row | Panel | Query | Series | Exemplars | Stored exemplars | In span file |",
        "|-----|-------|-------|-------:|-----------|-----------------:|--------------|",
    ]
    for r in results:
        enabled = "enabled" if r.exemplar_enabled else "off"
        in_spans = (
            "-"
            if not r.exemplars
            else "yes"
            if not r.unexported
            else f"NO ({len(r.unexported)} missing)"
        )
        lines.append(
            f"| {r.row} | {r.panel} | {r.ref_id} | {r.series} | {enabled} | "
            f"{len(r.exemplars)} | {in_spans} |"
        )
    return "\n".join(lines) + "\n"


@dataclass
class DashboardRun:
    results: list[TargetResult]
    report: str
    report_path: Path


@pytest.fixture(scope="module")
def dashboard_run(
    prometheus: PrometheusServer,
    demo: DemoWorkload,
    dashboard: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> DashboardRun:
    """The dashboard evaluated once every query answers (or the polling timed out)."""
    assert demo.started_at is not None
    since = demo.started_at - 1
    results: list[TargetResult] = []

    def settled() -> bool:
        nonlocal results
        results = evaluate_dashboard(prometheus, dashboard, since)
        return all(r.answered for r in results)

    # Panels built on recording rules need a few evaluations; the tests below report
    # whatever is still missing when this gives up.
    with contextlib.suppress(TimeoutError):
        prometheus.wait_for(settled, timeout=SCRAPE_TIMEOUT, description="every panel")
    elapsed = time.time() - demo.started_at

    # Spans are exported in batches (200 ms) after they end: poll the span file until
    # every exemplar's trace is in it.
    exemplars = [e for r in results for e in r.exemplars]

    def exported() -> dict[str, list[dict[str, Any]]] | None:
        traces = spans_by_trace(demo)
        return traces if all(exemplar_problem(e, traces) is None for e in exemplars) else None

    traces: dict[str, list[dict[str, Any]]] = {}
    with contextlib.suppress(TimeoutError):
        traces = poll(exported, timeout=20, description="the exemplars' spans")
    traces = traces or spans_by_trace(demo)
    for r in results:
        r.unexported = [p for e in r.exemplars if (p := exemplar_problem(e, traces))]

    report = panel_report(results, elapsed, sum(len(v) for v in traces.values()))
    report_path = tmp_path_factory.mktemp("observability") / "panels.md"
    report_path.write_text(report, encoding="utf-8")
    return DashboardRun(results, report, report_path)


@pytest.mark.slow
def test_every_dashboard_panel_answers_with_data(dashboard_run: DashboardRun) -> None:
    print(f"\n{dashboard_run.report}(written to {dashboard_run.report_path})")
    empty = [f"{r.row} / {r.where}: {r.expr}" for r in dashboard_run.results if not r.series]
    assert not empty, "panels without a series:\n" + "\n".join(empty)


@pytest.mark.slow
def test_exemplars_are_stored_for_exactly_the_queries_that_enable_them(
    dashboard_run: DashboardRun,
) -> None:
    enabled_without = [
        r.where for r in dashboard_run.results if r.exemplar_enabled and not r.exemplars
    ]
    disabled_with = [
        r.where for r in dashboard_run.results if not r.exemplar_enabled and r.exemplars
    ]
    assert not (enabled_without or disabled_with), (
        f"exemplars enabled, none stored: {enabled_without}; "
        f"exemplars stored, not enabled: {disabled_with}"
    )


@pytest.mark.slow
def test_exemplar_trace_ids_belong_to_exported_spans(dashboard_run: DashboardRun) -> None:
    exemplars = [e for r in dashboard_run.results for e in r.exemplars]
    assert exemplars
    assert all(re.fullmatch(r"[0-9a-f]{32}", e.trace_id) for e in exemplars)
    problems = [f"{r.where}: {p}" for r in dashboard_run.results for p in r.unexported]
    assert not problems, "\n".join(problems)


def label_values(prom: PrometheusServer, selector: str, label: str) -> set[str]:
    return {series[label] for series in prom.series(selector) if label in series}


@pytest.mark.slow
def test_dashboard_variable_queries_return_values(
    prometheus: PrometheusServer, dashboard: dict[str, Any]
) -> None:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
        assert match, query
        selector, label = substitute(match.group(1)), match.group(2)
        values = prometheus.wait_for(
            functools.partial(label_values, prometheus, selector, label),
            timeout=SCRAPE_TIMEOUT,
            description=f"values of variable {variable['name']}",
        )
        assert values, f"variable {variable['name']}: no values of {label} in {selector}"


# A comparison with a number: the threshold of an alert (`expr > 0.25`, `== 2`).
THRESHOLD = re.compile(
    r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.])"
)


def without_thresholds(expr: str) -> str:
    """``expr`` with its threshold comparisons removed: what the alert compares."""
    stripped = THRESHOLD.sub("", expr)
    assert stripped != expr, f"no threshold in {expr!r}"
    assert not re.search(r"[<>]|==|!=", stripped), f"a comparison is left in {stripped!r}"
    return stripped


def test_without_thresholds() -> None:
    assert without_thresholds("max by (job) (x) == 2") == "max by (job) (x)"
    assert (
        without_thresholds("a:b:c > 0.10\nand on (job, name)\nd:e:f > 5e-2\n")
        == "a:b:c\nand on (job, name)\nd:e:f\n"
    )


@pytest.mark.slow
def test_every_rule_expression_returns_series(
    prometheus: PrometheusServer, rules: dict[str, Any]
) -> None:
    # All rules are loaded and evaluate without error in a real Prometheus.
    def evaluated() -> list[dict[str, Any]] | None:
        loaded = [r for g in prometheus.rule_groups() for r in g["rules"]]
        if len(loaded) != len(all_rules(rules)):
            return None
        if any(r.get("lastEvaluation", "").startswith("0001") for r in loaded):
            return None
        return loaded

    loaded = prometheus.wait_for(evaluated, timeout=SCRAPE_TIMEOUT, description="rules")
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in loaded if r["health"] != "ok"]
    assert not unhealthy, "\n".join(unhealthy)

    # Recording rules: the expression and the recorded series; alerts: what they
    # compare with their threshold (the threshold may rightly filter everything out).
    queries: dict[str, str] = {}
    for rule in all_rules(rules):
        if "record" in rule:
            queries[f"{rule['record']} (expression)"] = rule["expr"]
            queries[f"{rule['record']} (recorded)"] = rule["record"]
        else:
            queries[f"{rule['alert']} (without threshold)"] = without_thresholds(rule["expr"])

    def empty() -> list[str]:
        return [
            f"{where}: {expr.strip()}"
            for where, expr in queries.items()
            if not prometheus.query(expr)
        ]

    with contextlib.suppress(TimeoutError):
        prometheus.wait_for(lambda: not empty(), timeout=SCRAPE_TIMEOUT, description="rules")
    missing = empty()
    assert not missing, "rule expressions without a series:\n" + "\n".join(missing)


@pytest.mark.slow
def test_group_level_retries_count_in_the_retry_ratio(prometheus: PrometheusServer) -> None:
    # The demo retries search calls rejected by its open breaker at the group level:
    # rh_agents_retries_total{operation="parallel_item", name="search"}, with events of
    # name "search" under operation execute_tool only. The ratio per name counts them.
    def item_retries() -> set[str]:
        query = 'rh_agents_retries_total{job="rh_agents", operation="parallel_item"}'
        return {series["metric"]["name"] for series in prometheus.query(query)}

    names = prometheus.wait_for(
        item_retries, timeout=SCRAPE_TIMEOUT, description="parallel_item retries"
    )
    assert "search" in names

    def ratio() -> float | None:
        found = prometheus.query('job_name:rh_agents_retries:ratio_rate5m{name="search"}')
        value = float(found[0]["value"][1]) if found else 0.0
        return value or None

    assert prometheus.wait_for(ratio, timeout=SCRAPE_TIMEOUT, description="retry ratio") > 0


# ------------------------------------------------------------------------------------
# A circuit breaker open for one second between two scrapes
# ------------------------------------------------------------------------------------

FLAP_SCRAPE = 5.0  # the shipped scrape interval (telemetry/prometheus.yml)
# Grafana's $__rate_interval for it: max(4 x scrape interval, interval + scrape interval)
FLAP_RATE_INTERVAL = "20s"


class FlappingBreaker:
    """tests/flapping_breaker.py in its own process: /metrics on a loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_loopback_port()
        self._stderr = (workdir / "stderr.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("flapping_breaker.py")),
                str(self.port),
                str(workdir / "spans.jsonl"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=workdir,
        )
        self.workdir = workdir
        assert self.read() == "ready", self.log()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.workdir / "stderr.log").read_text(errors="replace")

    def read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line, f"the flapping breaker exited: {self.log()}"
        return line

    def send(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> None:
        """Ask it to quit (it shuts its telemetry down), then stop it by its pid."""
        if self.process.poll() is None and self.process.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        stop_process(self.process)  # type: ignore[arg-type]
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


@pytest.fixture
def flapping(tmp_path: Path) -> Iterator[FlappingBreaker]:
    flapper = FlappingBreaker(tmp_path)
    try:
        yield flapper
    finally:
        flapper.stop()
        assert_stopped([flapper.process.pid])


def last_scrape(prom: PrometheusServer) -> float:
    """When Prometheus last scraped its (only) target, Unix time (0 before the first)."""
    [target] = prom.targets_health()
    stamp = target.get("lastScrape", "")
    if not stamp or stamp.startswith("0001"):
        return 0.0
    # RFC 3339 with nanoseconds: keep microseconds for fromisoformat
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    assert match, stamp
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone).timestamp()


def panel_query(dash: dict[str, Any], title: str, ref_id: str = "A") -> str:
    panel = next(p for p in leaf_panels(dash) if p["title"] == title)
    expr = next(t["expr"] for t in panel["targets"] if t["refId"] == ref_id)
    return substitute(expr.replace("$__rate_interval", FLAP_RATE_INTERVAL))


@pytest.mark.slow
def test_a_breaker_open_for_one_second_between_two_scrapes_shows_and_fires(
    flapping: FlappingBreaker, dashboard: dict[str, Any]
) -> None:
    require_binary("prometheus")
    assert flapping.send("watch") == "watching"
    breaker = 'breaker="flappy"'
    with PrometheusServer(
        [flapping.address], scrape_interval=f"{FLAP_SCRAPE:.0f}s", evaluation_interval="1s"
    ) as prom:
        # The breaker's counters are scraped at 0 first (so increase() sees the change).
        prom.wait_for(
            lambda: prom.query(
                f'rh_agents_circuit_breaker_transitions_total{{{breaker}, to_state="open"}} == 0'
            ),
            timeout=SCRAPE_TIMEOUT,
            description="the breaker's counters at 0",
        )
        # Right after a scrape, the breaker opens for a second and closes again.
        before = last_scrape(prom)
        scraped = prom.wait_for(
            lambda: (last_scrape(prom) > before and last_scrape(prom)) or None,
            timeout=SCRAPE_TIMEOUT,
            description="a fresh scrape",
        )
        answer = flapping.send("flap").split()
        opened, closed = float(answer[1]), float(answer[2])
        assert closed - opened >= 1.0
        assert closed < scraped + FLAP_SCRAPE - 0.5, "the flap did not fit between two scrapes"
        prom.wait_for(
            lambda: last_scrape(prom) > closed or None,
            timeout=SCRAPE_TIMEOUT,
            description="the scrape after the flap",
        )

        # The gauge, read at scrape time, never saw it open ...
        [state] = prom.query(f"max_over_time(rh_agents_circuit_breaker_state{{{breaker}}}[1m])")
        assert float(state["value"][1]) == 0

        # ... the panels built on the counters do.
        transitions = {
            series["metric"]["to_state"]: float(series["value"][1])
            for series in prom.query(panel_query(dashboard, "Breaker transitions and rejections"))
            if series["metric"].get("breaker") == "flappy"
        }
        assert set(transitions) == {"open", "half_open", "closed"}
        assert all(value > 0 for value in transitions.values()), transitions
        [time_open] = prom.query(panel_query(dashboard, "Time open per breaker"))
        assert float(time_open["value"][1]) > 0
        [openings] = prom.query(panel_query(dashboard, "Breaker openings"))
        assert float(openings["value"][1]) > 0

        # ... and so does the alert.
        def firing() -> list[dict[str, Any]] | None:
            alerts = [
                a
                for a in prom.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "RhAgentsCircuitBreakerOpen"
                and a["labels"].get("breaker") == "flappy"
                and a["state"] == "firing"
            ]
            return alerts or None

        [alert] = prom.wait_for(firing, timeout=SCRAPE_TIMEOUT, description="the alert")
        assert alert["labels"]["severity"] == "warning"
        assert (
            alert["annotations"]["summary"] == "Circuit breaker flappy opened in the last 5 minutes"
        )
