"""Run a real Prometheus server for tests.

``PrometheusServer`` starts the ``prometheus`` binary (Debian package ``prometheus``) on
a free loopback port with a configuration generated from ``telemetry/prometheus.yml``:

* the targets of the scrape job (``rh_agents`` by default) are replaced by the loopback
  addresses given, and the other jobs are dropped;
* ``scrape_interval`` and ``evaluation_interval`` are short (1 s by default);
* ``rule_files`` are made absolute so the rules of ``telemetry/rules.yml`` are loaded;
* exemplar storage is enabled (``--enable-feature=exemplar-storage``);
* the TSDB lives in a temporary directory that is removed on stop.

It waits for ``/-/ready``, offers ``query``, ``query_exemplars``, ``series`` and
``wait_for`` helpers, and always stops the process it started, by its pid (SIGTERM,
then SIGKILL), also when starting or the test fails::

    with PrometheusServer(["127.0.0.1:9464"]) as prom:
        prom.wait_for(lambda: prom.query("up") or None, description="first scrape")
        print(prom.query("rate(rh_agents_events_total[15s])"))
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
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

REPO_ROOT = Path(__file__).resolve().parent.parent
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
    ) -> None:
        self.targets = list(targets)
        self.config_source = Path(config)
        self.job = job
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.binary = binary or find_binary("prometheus")
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
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
        if process is None:
            return
        if process.poll() is None:
            try:
                process.terminate()
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

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
        try:
            text = (self.workdir / "prometheus.log").read_text("utf-8", errors="replace")
        except (OSError, PrometheusError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

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
        raises TimeoutError with the last error and the tail of Prometheus' log.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            if self.process is None or self.process.poll() is not None:
                raise PrometheusError(f"prometheus is not running:\n{self.log_tail()}")
            try:
                value = predicate()
                if value:
                    return value
            except PrometheusError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {description}"
                    + (f" (last error: {last_error})" if last_error else "")
                    + f"\n{self.log_tail()}"
                )
            time.sleep(interval)
