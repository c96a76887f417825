"""Run a real Prometheus server, and the rh_agents demo workload it scrapes, for tests.

``PrometheusServer`` starts the ``prometheus`` binary (Debian package ``prometheus``) on
a free loopback port with a configuration generated from ``telemetry/prometheus.yml``:

* the targets of the scrape job (``rh_agents`` by default) are replaced by the loopback
  addresses given, and the other jobs are dropped;
* ``scrape_interval`` and ``evaluation_interval`` are short (1 s by default);
* ``rule_files`` are made absolute so the rules of ``telemetry/rules.yml`` are loaded;
* exemplar storage is enabled (``--enable-feature=exemplar-storage``);
* the TSDB lives in a temporary directory that is removed on stop.

It waits for ``/-/ready``, offers ``query``, ``query_exemplars``, ``series`` and
``wait_for`` helpers (``poll`` is the same without a server), and always stops the
process it started, by its pid (SIGTERM, then SIGKILL), also when starting or the test
fails.

``DemoWorkload`` runs ``python -m rh_agents.demo --serve`` the same way: /metrics on a
free loopback port, spans written to ``spans.jsonl`` in its state directory (the OTLP
variables are removed from its environment), stopped by its pid::

    with DemoWorkload(tmp_path) as demo, PrometheusServer([demo.address]) as prom:
        prom.wait_for(lambda: prom.query("up") or None, description="first scrape")
        print(prom.query("rate(rh_agents_events_total[15s])"))
        print(len(demo.exported_trace_ids()))
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "telemetry" / "prometheus.yml"
DEFAULT_JOB = "rh_agents"

T = TypeVar("T")


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or an API call failed."""


def find_binary(name: str) -> str | None:
    """The path of ``name`` on PATH (or in /usr/bin, /usr/sbin), or None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/bin", "/usr/sbin", "/usr/local/bin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes] | None, *, grace: float = 10.0) -> None:
    """Stop ``process`` by its pid: SIGTERM, then SIGKILL after ``grace`` seconds.

    Waits for it, so that no zombie is left; does nothing when it has already exited.
    """
    if process is None or process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def render_config(
    source: Path,
    targets: Sequence[str],
    *,
    job: str = DEFAULT_JOB,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> dict[str, Any]:
    """The configuration of ``source`` with ``job`` scraping ``targets`` only.

    Targets must be loopback addresses: tests never scrape anything else.
    """
    for target in targets:
        host = target.rsplit(":", 1)[0].strip("[]")
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ValueError(f"scrape target {target!r} is not a loopback address")
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    global_cfg = config.setdefault("global", {})
    global_cfg["scrape_interval"] = scrape_interval
    global_cfg["evaluation_interval"] = evaluation_interval
    # The scrape timeout may not exceed the (now shorter) scrape interval.
    global_cfg["scrape_timeout"] = scrape_interval
    jobs = [sc for sc in config.get("scrape_configs", []) if sc.get("job_name") == job]
    if not jobs:
        raise ValueError(f"{source} has no scrape job named {job!r}")
    scrape = jobs[0]
    for key in list(scrape):
        if key.endswith("_sd_configs") or key in ("scrape_interval", "scrape_timeout"):
            del scrape[key]
    # Keep the static labels of the first target group (e.g. `service`), new targets.
    labels = {}
    for group in scrape.get("static_configs", []):
        labels.update(group.get("labels", {}))
    static: dict[str, Any] = {"targets": list(targets)}
    if labels:
        static["labels"] = labels
    scrape["static_configs"] = [static]
    config["scrape_configs"] = [scrape]
    config["rule_files"] = [
        str((source.parent / pattern).resolve()) for pattern in config.get("rule_files", [])
    ]
    return config


class PrometheusServer:
    """A Prometheus process on a free loopback port, scraping the given targets."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        config: Path = DEFAULT_CONFIG,
        job: str = DEFAULT_JOB,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        binary: str | None = None,
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
        watch: Callable[[], None] | None = None,
    ) -> None:
        self.targets = list(targets)
        self.config_source = Path(config)
        self.job = job
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.binary = binary or find_binary("prometheus")
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        # Called before every attempt of wait_for; raises to give up early (e.g. when the
        # scraped process died: waiting for its data would only time out).
        self.watch = watch
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every process started, also failed attempts
        self._tmpdir: str | None = None
        self._log_file: Any = None

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def workdir(self) -> Path:
        if self._tmpdir is None:
            raise PrometheusError("Prometheus is not running")
        return Path(self._tmpdir)

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def start(self) -> PrometheusServer:
        if self.process is not None:
            raise PrometheusError("already started")
        if self.binary is None:
            raise PrometheusError("the prometheus binary is not installed")
        self._tmpdir = tempfile.mkdtemp(prefix="rh-agents-prometheus-")
        try:
            config = render_config(
                self.config_source,
                self.targets,
                job=self.job,
                scrape_interval=self.scrape_interval,
                evaluation_interval=self.evaluation_interval,
            )
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
            # A port found free may be taken before Prometheus binds it: retry a few times.
            last_error: Exception | None = None
            for _attempt in range(3):
                try:
                    self._launch()
                    self._wait_ready()
                    return self
                except PrometheusError as exc:
                    last_error = exc
                    self._terminate()
            raise PrometheusError(f"Prometheus did not start: {last_error}")
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        assert self.binary is not None
        self.port = free_loopback_port()
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.workdir / "prometheus.log", "ab")
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--enable-feature=exemplar-storage",
            "--storage.tsdb.retention.time=1h",
            "--log.level=info",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.pids.append(self.process.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise PrometheusError(
            f"prometheus not ready after {self.startup_timeout}s:\n{self.log_tail()}"
        )

    def _terminate(self) -> None:
        """Stop the process by its pid: SIGTERM, then SIGKILL."""
        process, self.process = self.process, None
        stop_process(process)

    def stop(self) -> None:
        """Stop Prometheus (if running) and remove its temporary directory."""
        try:
            self._terminate()
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            self.port = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if self._tmpdir is None:
            return "(no log)"
        return _tail(self.workdir / "prometheus.log", lines)

    # -- HTTP API ---------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET /api/v1/<path>; returns ``data``, raises PrometheusError on an error."""
        query = urllib.parse.urlencode(params or {})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            # Prometheus answers errors (bad query, ...) with a JSON body too.
            with exc:
                try:
                    body = json.load(exc)
                except ValueError:
                    raise PrometheusError(f"GET {url}: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body.get("data")

    def query(self, expr: str, time_: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the list of result series (``metric`` and ``value``)."""
        params = {"query": expr}
        if time_ is not None:
            params["time"] = f"{time_:.3f}"
        data = self.api("query", params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        if data["resultType"] == "string":
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """Exemplars of the series selected by ``expr`` between ``start`` and ``end``."""
        data = self.api(
            "query_exemplars", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        )
        return list(data or [])

    def series(self, match: str, start: float | None = None) -> list[dict[str, str]]:
        params = {"match[]": match}
        if start is not None:
            params["start"] = f"{start:.3f}"
        return list(self.api("series", params))

    def targets_health(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float = 30.0,
        interval: float = 0.25,
        description: str = "condition",
    ) -> T:
        """Poll ``predicate`` until it returns a truthy value, and return that value.

        A PrometheusError raised by the predicate counts as "not yet". On timeout,
        raises TimeoutError with the last error and the tail of Prometheus' log; gives
        up early when Prometheus exits or ``watch`` raises.
        """

        def check_running() -> None:
            if self.process is None or self.process.poll() is not None:
                raise PrometheusError(f"prometheus is not running:\n{self.log_tail()}")
            if self.watch is not None:
                self.watch()

        try:
            return poll(
                predicate,
                timeout=timeout,
                interval=interval,
                description=description,
                not_yet=(PrometheusError,),
                check=check_running,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None


def poll(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.25,
    description: str = "condition",
    not_yet: tuple[type[Exception], ...] = (),
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value.

    Exceptions of the ``not_yet`` types count as "not yet"; ``check`` runs before every
    attempt and raises to give up early (e.g. when a process died). On timeout, raises
    TimeoutError naming ``description`` and the last "not yet" error.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if check is not None:
            check()
        try:
            value = predicate()
            if value:
                return value
        except not_yet as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {description}"
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)


class DemoError(RuntimeError):
    """The demo workload could not be started, or stopped serving."""


class DemoWorkload:
    """``python -m rh_agents.demo --serve`` with /metrics on a free loopback port.

    Spans go to ``<state_dir>/spans.jsonl`` (one JSON object per span, as written by
    ``rh_agents.telemetry.JsonLinesSpanExporter``): the OTLP variables are removed from
    the demo's environment, so that it writes the file instead of exporting elsewhere.
    The checkout's ``rh_agents`` is imported (``PYTHONPATH``), and the process is stopped
    by its pid with SIGTERM (which the demo handles like Ctrl-C, flushing its spans),
    then SIGKILL.
    """

    SPAN_FILE = "spans.jsonl"

    def __init__(
        self,
        state_dir: Path,
        *,
        speed: float = 0.2,
        python: str = sys.executable,
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.state_dir = Path(state_dir)
        self.speed = speed
        self.python = python
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every process started, also failed attempts
        self.started_at: float | None = None  # wall clock, when /metrics first answered
        self._log_file: Any = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise DemoError("the demo is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}/metrics"

    @property
    def span_file(self) -> Path:
        return self.state_dir / self.SPAN_FILE

    @property
    def log_path(self) -> Path:
        return self.state_dir / "demo.log"

    def start(self) -> DemoWorkload:
        if self.process is not None:
            raise DemoError("already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            # A port found free may be taken before the demo binds it: retry a few times.
            last_error: Exception | None = None
            for _attempt in range(3):
                try:
                    self._launch()
                    self._wait_ready()
                    self.started_at = time.time()
                    return self
                except DemoError as exc:
                    last_error = exc
                    stop_process(self.process)
            raise DemoError(f"the demo did not start: {last_error}")
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        self.port = free_loopback_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.log_path, "ab")
        args = [
            self.python,
            "-m",
            "rh_agents.demo",
            "--serve",
            "--speed",
            str(self.speed),
            "--metrics-port",
            str(self.port),
            "--metrics-addr",
            "127.0.0.1",
            "--state-dir",
            str(self.state_dir),
            "--no-progress",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.state_dir,
            env=env,
        )
        self.pids.append(self.process.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self.check_running()
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise DemoError(f"/metrics not served after {self.startup_timeout}s:\n{self.log_tail()}")

    def check_running(self) -> None:
        """Raise DemoError (with the demo's output) when the process has exited."""
        if self.process is None:
            raise DemoError("the demo is not running")
        if self.process.poll() is not None:
            raise DemoError(
                f"the demo exited with code {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """Stop the demo (if running), by its pid; the state directory is kept."""
        try:
            stop_process(self.process, grace=15.0)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> DemoWorkload:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def metrics_text(self) -> str:
        """The /metrics exposition in the Prometheus text format (no Accept header)."""
        self.check_running()
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text: str = response.read().decode("utf-8")
            return text

    def exported_spans(self) -> list[dict[str, Any]]:
        """The spans written to the span file so far (a line being written is skipped)."""
        try:
            text = self.span_file.read_text("utf-8")
        except FileNotFoundError:
            return []
        spans: list[dict[str, Any]] = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n") and line.strip():
                # One OTLP JSON request per line; flattened as tests/span_file.py does.
                spans.extend(_flat_spans(json.loads(line)))
        return spans

    def exported_trace_ids(self) -> set[str]:
        """The trace ids of the spans written to the span file so far."""
        return {span["trace_id"] for span in self.exported_spans() if span.get("trace_id")}


def _flat_spans(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": span["name"],
            "trace_id": span["traceId"],
            "start_time_unix_nano": int(span["startTimeUnixNano"]),
            "end_time_unix_nano": int(span["endTimeUnixNano"]),
        }
        for resource in request["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
