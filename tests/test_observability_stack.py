"""The observability stack: docker-compose.yml, telemetry/, grafana/ and the Dockerfile.

Proved without Docker:

* promtool accepts telemetry/prometheus.yml and telemetry/rules.yml, and the promtool
  unit tests of telemetry/rules_test.yml pass (every alert firing and not firing);
* docker-compose accepts docker-compose.yml (`config -q`), which pins its images, binds
  every published port to 127.0.0.1 and mounts what the provisioning files expect;
* the Grafana provisioning and dashboard are consistent and structurally valid;
* a real Prometheus, scraping a stand-in exporter of every rh_agents metric, evaluates
  every PromQL expression of the dashboard and of the rules to at least one series, and
  stores the exemplars (trace_id) of the exposition.

Tests that need the `prometheus`, `promtool` or `docker-compose` binaries skip when one
is missing, except under CI=true where a missing binary is a failure (.ci/run installs
them).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_server import PrometheusServer, find_binary

REPO = Path(__file__).resolve().parent.parent
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
    "rh_agents_circuit_breaker_trips_total": ("counter", ("breaker",)),
    "rh_agents_circuit_breaker_rejections_total": ("counter", ("breaker",)),
    "rh_agents_circuit_breaker_state": ("gauge", ("breaker",)),
    "rh_agents_semaphore_wait_seconds": ("histogram", ("group",)),
    "rh_agents_parallel_groups_total": ("counter", ("group", "status")),
    "rh_agents_parallel_group_duration_seconds": ("histogram", ("group", "status")),
    "rh_agents_parallel_in_flight": ("gauge", ("group",)),
    "rh_agents_parallel_queued": ("gauge", ("group",)),
    "rh_agents_parallel_max_workers": ("gauge", ("group",)),
}

OPERATIONS = ("invoke_agent", "execute_tool", "chat")
OUTCOMES = ("completed", "failed", "cancelled", "replayed", "cached", "rejected")
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


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
    """The path of ``name``; skip without it, or fail when CI=true."""
    path = find_binary(name)
    if path is None:
        message = (
            f"`{name}` is not installed (Debian: apt-get install -y "
            f"{'docker-compose' if name == 'docker-compose' else 'prometheus'}); "
            ".ci/run installs it"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return path


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


VARIABLE_VALUES = {"$__rate_interval": "15s", "$job": ".*", "$group": ".*", "$name": ".*"}


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
        "RhAgentsCircuitBreakerOpen",
        "RhAgentsHighFailureRatio",
        "RhAgentsHighRetryRatio",
        "RhAgentsSemaphoreWaitHigh",
    }
    for alert in alerts:
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


def test_dashboard_rows_and_panel_types(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Throughput & errors", "Latency", "Concurrency", "Resilience"]
    # Panels belong to the row above them (by y): check the kinds each row holds.
    sections: dict[str, list[dict[str, Any]]] = {}
    current = ""
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = panel["title"]
            sections[current] = []
        else:
            sections[current].append(panel)
    assert {p["type"] for p in sections["Overview"]} == {"stat"}
    assert len(sections["Overview"]) == 5
    assert "heatmap" in {p["type"] for p in sections["Latency"]}
    assert "heatmap" in {p["type"] for p in sections["Concurrency"]}
    assert "state-timeline" in {p["type"] for p in sections["Resilience"]}
    latency_quantiles = next(p for p in sections["Latency"] if "p99" in p["title"])
    assert len(latency_quantiles["targets"]) == 3
    assert all(t["exemplar"] for t in latency_quantiles["targets"])
    for panel in leaf_panels(dashboard):
        if panel["type"] == "heatmap":
            assert all(t["format"] == "heatmap" for t in panel["targets"]), panel["title"]


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
BARE_METRIC = re.compile(r"\b((?:[a-z_]+:)?rh_agents_[a-zA-Z0-9_:]*)\b(?!\s*\{)")
RANGE = re.compile(r"\[([^\]]*)\]")
KNOWN_LABELS = (
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
    expr: str, where: str, series_labels: dict[str, tuple[str, ...]]
) -> list[str]:
    """What is wrong with how ``expr`` uses the dashboard variables (empty when nothing)."""
    problems: list[str] = []
    if BARE_METRIC.search(SELECTOR.sub("", expr)):
        problems.append(f"{where}: metric without a label selector in {expr!r}")
    for range_ in RANGE.findall(expr):
        if range_ != "$__rate_interval":
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
        problems += variable_problems(target["expr"], where, series_labels)
        if "rate(" in target["expr"] or "increase(" in target["expr"]:
            if "[$__rate_interval]" not in target["expr"]:
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
        assert names & used, f"{metric} is used by no panel or rule"


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
# A real Prometheus scraping a stand-in exporter
# ------------------------------------------------------------------------------------


class StandInMetricsExporter:
    """STAND-IN for the rh_agents demo workload (until the real demo run is scraped).

    A prometheus_client registry declaring every rh_agents metric with the names and
    labels the library exposes, served on a loopback port. A background thread records
    a small synthetic workload a few times a second — every operation and outcome, errors,
    retries, breaker trips and state, parallel groups — with a trace_id exemplar on every
    counter increment and histogram observation, as the library does.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "rh_agents_events", "Events.", METRICS["rh_agents_events_total"][1], registry=r
        )
        self.errors = Counter(
            "rh_agents_event_errors",
            "Errors.",
            METRICS["rh_agents_event_errors_total"][1],
            registry=r,
        )
        self.duration = Histogram(
            "rh_agents_event_duration_seconds",
            "Durations.",
            METRICS["rh_agents_event_duration_seconds"][1],
            buckets=BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "rh_agents_retries", "Retries.", METRICS["rh_agents_retries_total"][1], registry=r
        )
        self.trips = Counter("rh_agents_circuit_breaker_trips", "Trips.", ("breaker",), registry=r)
        self.rejections = Counter(
            "rh_agents_circuit_breaker_rejections", "Rejections.", ("breaker",), registry=r
        )
        self.breaker_state = Gauge(
            "rh_agents_circuit_breaker_state", "State.", ("breaker",), registry=r
        )
        self.semaphore_wait = Histogram(
            "rh_agents_semaphore_wait_seconds", "Wait.", ("group",), buckets=BUCKETS, registry=r
        )
        self.groups = Counter(
            "rh_agents_parallel_groups", "Groups.", ("group", "status"), registry=r
        )
        self.group_duration = Histogram(
            "rh_agents_parallel_group_duration_seconds",
            "Groups.",
            ("group", "status"),
            buckets=BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("rh_agents_parallel_in_flight", "In flight.", ("group",), registry=r)
        self.queued = Gauge("rh_agents_parallel_queued", "Queued.", ("group",), registry=r)
        self.max_workers = Gauge("rh_agents_parallel_max_workers", "Max.", ("group",), registry=r)
        self._random = random.Random(1234)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.address = ""

    def _trace(self) -> dict[str, str]:
        return {"trace_id": f"{self._random.getrandbits(128):032x}"}

    def record_round(self) -> None:
        rnd = self._random
        actors = [("invoke_agent", "planner"), ("execute_tool", "search"), ("chat", "gpt-4o")]
        for operation, name in actors:
            for outcome in OUTCOMES:
                self.events.labels(operation, name, outcome).inc(exemplar=self._trace())
                self.duration.labels(operation, name, outcome).observe(
                    rnd.uniform(0.002, 3.0), exemplar=self._trace()
                )
            self.errors.labels(operation, name, "TimeoutError").inc(exemplar=self._trace())
            self.retries.labels(operation, name).inc(exemplar=self._trace())
        for breaker, state in (("llm", 2), ("search", 1), ("db", 0)):
            self.breaker_state.labels(breaker).set(state)
            self.trips.labels(breaker).inc(exemplar=self._trace())
            self.rejections.labels(breaker).inc(exemplar=self._trace())
        for group in ("fanout", "research"):
            self.max_workers.labels(group).set(4)
            self.in_flight.labels(group).set(rnd.randint(1, 4))
            self.queued.labels(group).set(rnd.randint(0, 10))
            self.semaphore_wait.labels(group).observe(
                rnd.uniform(0.001, 8.0), exemplar=self._trace()
            )
            for status in ("completed", "failed", "cancelled"):
                self.groups.labels(group, status).inc(exemplar=self._trace())
                self.group_duration.labels(group, status).observe(
                    rnd.uniform(0.01, 20.0), exemplar=self._trace()
                )

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.record_round()

    def start(self) -> StandInMetricsExporter:
        self.record_round()
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.address = f"127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._loop, name="stand-in-workload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture(scope="module")
def metrics_target() -> Iterator[str]:
    """The loopback host:port Prometheus scrapes: today the stand-in exporter."""
    exporter = StandInMetricsExporter().start()
    try:
        yield exporter.address
    finally:
        exporter.stop()


@pytest.fixture(scope="module")
def prometheus(metrics_target: str) -> Iterator[PrometheusServer]:
    require_binary("prometheus")
    with PrometheusServer([metrics_target]) as server:
        # Two scrapes at least, so that rate() over 15s has two samples. (Prometheus
        # hands new targets to the scrape manager after ~5s: the first scrape is slow.)
        server.wait_for(
            lambda: server.query('count_over_time(up{job="rh_agents"}[1m]) >= 2'),
            timeout=30,
            description="two scrapes of the rh_agents job",
        )
        yield server


@pytest.mark.slow
def test_prometheus_scrapes_the_target(prometheus: PrometheusServer, metrics_target: str) -> None:
    targets = prometheus.targets_health()
    assert [t["scrapeUrl"] for t in targets] == [f"http://{metrics_target}/metrics"]
    assert targets[0]["health"] == "up", targets[0].get("lastError")
    assert targets[0]["labels"]["job"] == "rh_agents"
    for series in exposed_series_names():
        assert prometheus.query(f'{series}{{job="rh_agents"}}'), f"{series} was not scraped"


@pytest.mark.slow
def test_prometheus_stores_exemplars(prometheus: PrometheusServer) -> None:
    now = time.time()
    for selector in (
        'rh_agents_event_duration_seconds_bucket{job="rh_agents"}',
        'rh_agents_events_total{job="rh_agents"}',
    ):
        found = prometheus.query_exemplars(selector, now - 300, now + 60)
        exemplars = [e for series in found for e in series["exemplars"]]
        assert exemplars, f"no exemplars for {selector}"
        assert all(re.fullmatch(r"[0-9a-f]{32}", e["labels"]["trace_id"]) for e in exemplars)


@pytest.mark.slow
def test_every_dashboard_expression_returns_series(
    prometheus: PrometheusServer, dashboard: dict[str, Any]
) -> None:
    # Recording rules need a few evaluations before panels built on them have data.
    prometheus.wait_for(
        lambda: prometheus.query("job_operation_name:rh_agents_retries:ratio_rate5m"),
        timeout=30,
        description="recording rules",
    )
    empty = []
    for panel, target in dashboard_targets(dashboard):
        expr = substitute(target["expr"])
        if not prometheus.query(expr):
            empty.append(f"{panel['title']}/{target['refId']}: {expr}")
    assert not empty, "queries without a series:\n" + "\n".join(empty)


@pytest.mark.slow
def test_exemplar_targets_find_exemplars(
    prometheus: PrometheusServer, dashboard: dict[str, Any]
) -> None:
    now = time.time()
    for panel, target in dashboard_targets(dashboard):
        if target.get("exemplar"):
            found = prometheus.query_exemplars(substitute(target["expr"]), now - 300, now + 60)
            assert any(s["exemplars"] for s in found), f"{panel['title']}: no exemplars"


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
        series = prometheus.series(selector)
        values = {s[label] for s in series if label in s}
        assert values, f"variable {variable['name']}: no values of {label} in {selector}"


@pytest.mark.slow
def test_every_rule_expression_evaluates(
    prometheus: PrometheusServer, rules: dict[str, Any]
) -> None:
    # All rules are loaded and evaluate without error in a real Prometheus.
    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.rule_groups()
        loaded = [r for g in groups for r in g["rules"]]
        if len(loaded) != len(all_rules(rules)):
            return None
        if any(r.get("lastEvaluation", "").startswith("0001") for r in loaded):
            return None
        return loaded

    loaded = prometheus.wait_for(evaluated, timeout=30, description="rules evaluated")
    for rule in loaded:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

    for rule in all_rules(rules):
        if "record" in rule:
            assert prometheus.query(rule["expr"]), f"{rule['record']}: no series"
            assert prometheus.query(rule["record"]), f"{rule['record']}: nothing recorded"
        else:
            # The threshold may (rightly) filter everything out: the expression must
            # parse and evaluate, and the recorded series it compares must exist.
            prometheus.query(rule["expr"])
            for record in re.findall(r"\b[a-z_]+:rh_agents_[a-zA-Z0-9_:]*", rule["expr"]):
                assert prometheus.query(record), f"{rule['alert']}: {record} has no series"
