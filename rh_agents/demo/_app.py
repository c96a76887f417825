"""``python -m rh_agents.demo``: run the demo workload with embedded defaults.

Everything a first run needs is local: the history goes to SQLite in the state
directory, spans to a JSON-lines file next to it (or to an OTLP endpoint when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), and Prometheus metrics are served on
127.0.0.1 while the demo runs. Ctrl-C leaves a consistent, resumable history;
``--resume`` replays what completed and runs the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rh_agents.core.errors import StateError
from rh_agents.core.events import ExecutionResult
from rh_agents.core.execution import EventBus, ExecutionState
from rh_agents.core.state_recovery import ReplayMode, StateMetadata, StateStatus
from rh_agents.core.types import ExecutionStatus
from rh_agents.demo._clock import PacedClock
from rh_agents.demo._output import Display, collect_stats, make_display, render_summary
from rh_agents.demo.pipeline import CorpusReport, DemoPipeline, Workload, run_pipeline
from rh_agents.storage import PostgresStateBackend, SQLiteStateBackend
from rh_agents.telemetry import (
    JsonLinesSpanExporter,
    MetricsPortInUseError,
    TelemetryHandle,
    setup,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["build_parser", "main"]

PROG = "python -m rh_agents.demo"
DEFAULT_STATE_DIR = ".rh_agents"
HISTORY_FILE = "history.db"
SPAN_FILE = "spans.jsonl"
SERVE_SPAN_FILE_BYTES = 8 * 1024 * 1024
"""Size at which ``--serve`` starts a new span file (the previous one is kept as .1)."""
LAST_RUN_FILE = "last_run"
LOCK_FILE = "demo.lock"
SERVE_KEEP_STATES = 20
_OTLP_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}

logger = logging.getLogger("rh_agents.demo")


class DemoError(Exception):
    """A problem the user can fix (bad option, nothing to resume, port in use...)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (any free port) to 65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line options."""
    defaults = Workload()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run the rh_agents demo: an orchestrator agent fans out document agents in "
            "parallel; each summarizes its chunks with a simulated LLM (transient errors, "
            "absorbed by group retries) and looks them up with a simulated search API "
            "that has an outage (a shared circuit breaker trips and recovers). The history "
            "is stored in SQLite, spans in a local file, and /metrics is served while it runs."
        ),
        epilog=(
            "Ctrl-C stops the run with a consistent history; run again with --resume to "
            "replay the completed work and finish the rest. Read the spans with "
            "`rh-agents trace show STATE_DIR/spans.jsonl`."
        ),
    )
    _add_workload_options(parser.add_argument_group("workload"), defaults)
    _add_mode_options(parser.add_argument_group("mode"))
    _add_output_options(
        parser.add_argument_group("storage and telemetry"), parser.add_argument_group("output")
    )
    return parser


def _add_workload_options(work: argparse._ArgumentGroup, defaults: Workload) -> None:
    work.add_argument(
        "--documents",
        type=_positive_int,
        metavar="N",
        help=f"documents to process (default {defaults.documents})",
    )
    work.add_argument(
        "--chunks",
        type=_positive_int,
        metavar="N",
        help=f"chunks per document (default {defaults.chunks})",
    )
    work.add_argument(
        "--seed", type=int, help=f"seed of every random choice (default {defaults.seed})"
    )
    work.add_argument(
        "--speed",
        type=_positive_float,
        default=defaults.speed,
        metavar="FACTOR",
        help="how fast the simulated time of latencies, retries and cooldowns runs (default "
        "1.0; 0.1 is 10x faster); the outcomes do not depend on it",
    )


def _add_mode_options(mode: argparse._ArgumentGroup) -> None:
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the last run of the state directory, replaying its completed work",
    )
    mode.add_argument(
        "--serve",
        action="store_true",
        help="run the workload again and again (new state each round) until interrupted",
    )
    mode.add_argument(
        "--pause",
        type=float,
        metavar="SECONDS",
        help="pause between --serve rounds (default 2 s times --speed)",
    )


def _add_output_options(where: argparse._ArgumentGroup, out: argparse._ArgumentGroup) -> None:
    where.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where the history ({HISTORY_FILE}), spans ({SPAN_FILE}) and the id of the "
        f"last run go (default {DEFAULT_STATE_DIR}/)",
    )
    where.add_argument(
        "--history",
        metavar="PATH_OR_URL",
        help=f"where the history goes: a SQLite file, or a PostgreSQL URL "
        f"(postgresql://user@host/db; needs the postgres extra) that coordinators on other "
        f"machines can resume from (default DIR/{HISTORY_FILE})",
    )
    where.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve Prometheus /metrics on this port while running (default 0: a free port)",
    )
    where.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to bind /metrics to (default 127.0.0.1; 0.0.0.0 in containers)",
    )
    out.add_argument(
        "--printer",
        choices=["progress", "realtime"],
        default="progress",
        help="progress: documents, retries, failures and breaker changes; realtime: every "
        "call as well (default progress)",
    )
    out.add_argument("--no-progress", action="store_true", help="print only the summary")
    out.add_argument("-v", "--verbose", action="store_true", help="log warnings and details")


# ------------------------------------------------------------------------ last run


def _last_run_path(state_dir: Path) -> Path:
    return state_dir / LAST_RUN_FILE


def _read_last_run(state_dir: Path) -> dict[str, Any]:
    path = _last_run_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DemoError(
            f"There is no run to resume in {state_dir}/ ({path} does not exist). Start one "
            f"with `{PROG}`{_state_dir_flag(state_dir)}, then use --resume after an "
            "interruption."
        ) from None
    except (OSError, ValueError) as exc:
        raise DemoError(f"Cannot read {path} ({exc}); start a new run without --resume.") from None
    if not isinstance(data, dict) or not isinstance(data.get("state_id"), str):
        raise DemoError(f"{path} does not name a run; start a new run without --resume.")
    return data


def _write_last_run(state_dir: Path, data: dict[str, Any]) -> None:
    path = _last_run_path(state_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _lock_state_dir(state_dir: Path) -> TextIO | None:
    """Hold an exclusive lock on ``state_dir`` for this process (POSIX only).

    Two demos writing the same run would interleave their histories; the lock turns that
    into a clear error. It is released when the process exits, however it exits.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = open(state_dir / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as exc:
        raise DemoError(f"Cannot use the state directory {state_dir}: {exc}") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise DemoError(
            f"Another demo (pid {owner}) is using {state_dir}/; wait for it or stop it, or "
            "pass another --state-dir."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _state_dir_flag(state_dir: Path) -> str:
    return "" if state_dir == Path(DEFAULT_STATE_DIR) else f" --state-dir {state_dir}"


def _resolve_workload(args: argparse.Namespace, state_dir: Path) -> tuple[Workload, str | None]:
    defaults = Workload()
    if not args.resume:
        return (
            Workload(
                documents=args.documents or defaults.documents,
                chunks=args.chunks or defaults.chunks,
                seed=args.seed if args.seed is not None else defaults.seed,
                speed=args.speed,
            ),
            None,
        )
    last = _read_last_run(state_dir)
    recorded = last.get("workload") or {}
    try:
        workload = Workload(
            documents=int(recorded["documents"]),
            chunks=int(recorded["chunks"]),
            seed=int(recorded["seed"]),
            speed=args.speed,
        )
    except (KeyError, TypeError, ValueError):
        raise DemoError(
            f"{_last_run_path(state_dir)} does not describe the workload of the last run; "
            "start a new run without --resume."
        ) from None
    asked = {"documents": args.documents, "chunks": args.chunks, "seed": args.seed}
    differs = [k for k, v in asked.items() if v is not None and v != getattr(workload, k)]
    if differs:
        print(
            f"note: --resume continues the last run as it was started "
            f"({workload.documents} documents x {workload.chunks} chunks, seed {workload.seed}); "
            f"ignoring --{', --'.join(differs)}.",
            file=sys.stderr,
        )
    return workload, str(last["state_id"])


# --------------------------------------------------------------------------- runs


@dataclass
class _Run:
    state: ExecutionState
    workload: Workload
    start: int
    resumed: bool
    started_at: float
    status: str = "running"
    result: ExecutionResult[CorpusReport] | None = None
    elapsed: float = 0.0


class _Session:
    """One invocation of the demo: its storage, telemetry and current run."""

    def __init__(
        self,
        args: argparse.Namespace,
        state_dir: Path,
        backend: SQLiteStateBackend | PostgresStateBackend,
        handle: TelemetryHandle,
        out: TextIO,
    ) -> None:
        self.args = args
        self.state_dir = state_dir
        self.backend = backend
        self.history = _history_label(backend)
        self.handle = handle
        self.out = out
        self.current: _Run | None = None
        self.signal: str | None = None
        self.rounds = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def main(self, workload: Workload, resume_id: str | None) -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            # docker stop / kill send SIGTERM: stop as cleanly as on Ctrl-C.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGTERM, self._terminate, task)
        if self.args.serve:
            await self._serve(workload)
            return 0  # pragma: no cover - _serve only ends by cancellation
        run = await self.run(workload, resume_id)
        return 0 if run.status == "completed" else 1

    def _terminate(self, task: asyncio.Task[Any]) -> None:
        self.signal = "SIGTERM"
        task.cancel()

    async def run(self, workload: Workload, resume_id: str | None = None) -> _Run:
        """Run (or resume) the workload once in a new (or restored) state."""
        display = make_display(self.out, self.args.printer, not self.args.no_progress)
        try:
            # Simulated time paced like real time: the same seed, the same run.
            async with PacedClock(workload.speed) as clock:
                return await self._run(workload, resume_id, clock, display)
        finally:
            _close_display(display)

    async def _run(
        self,
        workload: Workload,
        resume_id: str | None,
        clock: PacedClock,
        display: Display | None,
    ) -> _Run:
        telemetry = self.handle.telemetry
        if resume_id is not None:
            # REPUBLISH_ALL: replayed calls reach the printer too, so the progress shows
            # what came from the history.
            state = ExecutionState.load_from_state_id(
                resume_id,
                self.backend,
                event_bus=EventBus(),
                telemetry=telemetry,
                clock=clock,
                replay_mode=ReplayMode.REPUBLISH_ALL,
            )
        else:
            state = ExecutionState(
                state_backend=self.backend,
                event_bus=EventBus(),
                telemetry=telemetry,
                clock=clock,
                metadata=StateMetadata(
                    pipeline_name="rh_agents.demo",
                    description="rh_agents demo workload",
                    custom={"workload": asdict(workload)},
                ),
            )
        if display is not None:
            display.attach(state)
        run = _Run(
            state=state,
            workload=workload,
            start=len(state.history),
            resumed=resume_id is not None,
            started_at=time.monotonic(),
        )
        self.current = run
        self._record(run)
        try:
            run.result = await run_pipeline(DemoPipeline(workload), state)
        except asyncio.CancelledError:
            self._finish(run, "interrupted", StateStatus.PAUSED)
            raise
        except BaseException:
            self._finish(run, "failed", StateStatus.FAILED)
            raise
        if run.result.ok:
            self._finish(run, "completed", StateStatus.COMPLETED)
        else:
            self._finish(run, "failed", StateStatus.FAILED)
        return run

    def _record(self, run: _Run) -> None:
        _write_last_run(
            self.state_dir,
            {
                "state_id": run.state.state_id,
                "status": run.status,
                "workload": {
                    "documents": run.workload.documents,
                    "chunks": run.workload.chunks,
                    "seed": run.workload.seed,
                },
                "history": self.history,
                "updated_at": time.time(),
            },
        )

    def _finish(self, run: _Run, status: str, state_status: StateStatus) -> None:
        run.status = status
        run.elapsed = time.monotonic() - run.started_at
        try:
            run.state.save_checkpoint(status=state_status)
        except StateError as exc:
            logger.error("Could not save the final checkpoint of %s: %s", run.state.state_id, exc)
        try:
            self._record(run)
        except OSError as exc:
            logger.error("Could not update %s: %s", _last_run_path(self.state_dir), exc)

    async def _serve(self, base: Workload) -> None:
        pause = self.args.pause if self.args.pause is not None else 2.0 * base.speed
        kept: deque[str] = deque()
        while True:
            self.rounds += 1
            workload = replace(base, seed=base.seed + self.rounds - 1)
            run = await self.run(workload)
            stats = collect_stats(run.state, run.start)
            outcomes = stats.outcomes
            self.say(
                f"round {self.rounds}: {run.status} in {run.elapsed:.2f}s "
                f"(state {run.state.state_id}); calls {outcomes.get('completed', 0)} "
                f"completed, {outcomes.get('failed', 0)} failed attempts, "
                f"{outcomes.get('cancelled', 0)} cancelled; retries {stats.total_retries}; "
                f"breaker trips {stats.breaker_trips}"
            )
            kept.append(run.state.state_id)
            while len(kept) > SERVE_KEEP_STATES:
                old = kept.popleft()
                try:
                    self.backend.delete_state(old)
                except StateError as exc:
                    logger.warning("Could not delete old demo state %s: %s", old, exc)
            await asyncio.sleep(max(0.0, pause))

    # ------------------------------------------------------------------ output

    def header(self, workload: Workload, resume_id: str | None) -> None:
        mode = " (serve: until interrupted)" if self.args.serve else ""
        self.say(
            f"rh_agents demo: {workload.documents} documents x {workload.chunks} chunks, "
            f"seed {workload.seed}, speed {workload.speed:g}{mode}"
        )
        if resume_id is not None:
            self.say(f"  resuming {resume_id}: completed work is replayed from the history")
        self.say(f"  history  {self.history}")
        if self.handle.otlp_endpoint:
            self.say(f"  traces   OTLP {self.handle.otlp_endpoint}")
        span_file = _span_file(self.handle, self.state_dir, self.args)
        if span_file is not None:
            rotates = (
                f" (rotated at {SERVE_SPAN_FILE_BYTES // (1024 * 1024)} MiB, one previous "
                "file kept)"
                if self.args.serve
                else ""
            )
            self.say(f"  traces   {span_file}{rotates}")
        if self.handle.metrics_url:
            self.say(f"  metrics  {self.handle.metrics_url} (while the demo runs)")
        self.say()

    def _destinations(self) -> str:
        lines = self.handle.describe().splitlines()
        if not self.args.serve:
            lines = [
                line + " (served while the demo ran)" if line.startswith("metrics") else line
                for line in lines
            ]
        return "\n".join(lines)

    def summary(self, run: _Run) -> str:
        stats = collect_stats(run.state, run.start)
        verb = "Resumed run" if run.resumed else "Run"
        title = f"{verb} {run.state.state_id} {run.status} in {run.elapsed:.2f}s"
        return render_summary(
            stats,
            title=title,
            documents=_documents_line(run),
            history=f"{self.history} (state {run.state.state_id})",
            destinations=self._destinations(),
        )


def _close_display(display: Display | None) -> None:
    """Stop the live bars (if any) so the summary prints below them."""
    if display is None:
        return
    try:
        display.close()
    except Exception:
        logger.debug("Closing the progress display failed", exc_info=True)


def _documents_line(run: _Run) -> str:
    total = run.workload.documents
    result = run.result
    if result is not None and result.ok and isinstance(result.result, CorpusReport):
        report = result.result
        docs = report.documents
        chunks = sum(d.chunks_summarized for d in docs)
        all_chunks = chunks + sum(d.chunks_failed for d in docs)
        ok = sum(d.searches_ok for d in docs)
        searches = ok + sum(d.searches_unavailable for d in docs)
        # The tokens the LLM handlers reported (record_usage), from the history: a
        # resumed run counts the calls it replayed through the entries of the run
        # that made them.
        usage = run.state.history.token_usage()
        return (
            f"{len(docs)} of {total} completed: {chunks} of {all_chunks} chunks summarized, "
            f"{ok} of {searches} searches ok ({searches - ok} unavailable), "
            f"{usage.input_tokens + usage.output_tokens} tokens "
            f"({usage.input_tokens} in, {usage.output_tokens} out)"
        )
    done = sum(
        1
        for _, event in run.state.history
        if event.name == "document"
        and event.execution_status in (ExecutionStatus.COMPLETED, ExecutionStatus.RECOVERED)
    )
    return f"{done} of {total} completed before the run stopped"


class _CurrentStderr(logging.StreamHandler[TextIO]):
    """Writes log records to whatever ``sys.stderr`` is at the time of each record.

    While the terminal shows live progress bars, rich redirects ``sys.stderr`` to print
    above them; a handler bound to the original stream would write across the bars.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def _configure_logging(verbose: bool) -> None:
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if not verbose:
        # Degraded groups are already reported by the progress lines and the summary.
        logging.getLogger("rh_agents.parallel").setLevel(logging.ERROR)


def _telemetry(args: argparse.Namespace, state_dir: Path) -> TelemetryHandle:
    otlp = any(os.environ.get(var) for var in _OTLP_VARS)
    exporters: list[SpanExporter] = []
    trace_file: Path | None = None
    if not otlp:
        # With an OTLP endpoint configured, traces go there instead of a local file.
        # Served, the file rotates: it would otherwise grow for as long as the demo runs.
        if args.serve:
            span_file = state_dir / SPAN_FILE
            exporters.append(JsonLinesSpanExporter(span_file, max_bytes=SERVE_SPAN_FILE_BYTES))
        else:
            trace_file = state_dir / SPAN_FILE
    return setup(
        service_name=os.environ.get("OTEL_SERVICE_NAME") or "rh-agents-demo",
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        trace_file=trace_file,
        exporters=exporters or None,
    )


def _span_file(handle: TelemetryHandle, state_dir: Path, args: argparse.Namespace) -> Path | None:
    """Where this session's spans go locally (also the rotating file of --serve)."""
    if handle.trace_file:
        return handle.trace_file
    if args.serve and not handle.otlp_endpoint:
        return state_dir / SPAN_FILE
    return None


def _open_history(
    history: str | None, state_dir: Path
) -> SQLiteStateBackend | PostgresStateBackend:
    """The backend ``--history`` names: a PostgreSQL URL, a SQLite file, or the default."""
    if history is not None and history.startswith(("postgresql://", "postgres://")):
        return PostgresStateBackend(history)
    return SQLiteStateBackend(Path(history) if history else state_dir / HISTORY_FILE)


def _history_label(backend: SQLiteStateBackend | PostgresStateBackend) -> str:
    if isinstance(backend, PostgresStateBackend):
        return backend.location
    return backend.path


def _history_flag(history: str | None, backend: object) -> str:
    """``--history`` for the resume hint (a URL is not repeated: it may hold a password)."""
    if history is None:
        return ""
    if isinstance(backend, PostgresStateBackend):
        return " --history <the same URL>"
    return f" --history {history}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit code.

    0: the run completed; 1: the run failed; 2: a usage problem (nothing to resume,
    port in use, unreadable history); 130 / 143: interrupted by SIGINT / SIGTERM (the
    history is consistent and the run can be resumed).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.serve:
        parser.error("--resume and --serve cannot be combined")
    _configure_logging(args.verbose)
    state_dir = Path(args.state_dir)
    out = sys.stdout
    lock: TextIO | None = None
    try:
        lock = _lock_state_dir(state_dir)
        workload, resume_id = _resolve_workload(args, state_dir)
        try:
            backend = _open_history(args.history, state_dir)
        except (StateError, ImportError) as exc:
            raise DemoError(str(exc)) from None
        try:
            handle = _telemetry(args, state_dir)
        except MetricsPortInUseError as exc:
            backend.close()
            raise DemoError(str(exc)) from None
    except DemoError as exc:
        if lock is not None:
            lock.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2

    session = _Session(args, state_dir, backend, handle, out)
    code = 1
    error: BaseException | None = None
    try:
        session.header(workload, resume_id)
        code = asyncio.run(session.main(workload, resume_id))
    except KeyboardInterrupt:
        session.signal = session.signal or "SIGINT"
    except asyncio.CancelledError:
        session.signal = session.signal or "SIGTERM"
    except StateError as exc:
        error = exc
    finally:
        # Flush every span before telling the user where they are.
        handle.shutdown()
        backend.close()
        if lock is not None:
            lock.close()

    run = session.current
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if session.signal is not None:
        return _interrupted(session, run)
    if run is not None and not args.serve:
        session.say()
        session.say(session.summary(run))
        if run.status != "completed" and run.result is not None:
            session.say(f"The orchestrator failed: {run.result.error_message}")
    return code


def _interrupted(session: _Session, run: _Run | None) -> int:
    assert session.signal is not None
    session.say()
    if session.args.serve:
        session.say(f"Stopped ({session.signal}) after {session.rounds} round(s).")
        return _EXIT_SIGNAL.get(session.signal, 130)
    if run is not None:
        session.say(session.summary(run))
        completed = sum(
            1
            for _, event in run.state.history
            if event.execution_status in (ExecutionStatus.COMPLETED, ExecutionStatus.RECOVERED)
        )
        session.say()
        session.say(
            f"Interrupted ({session.signal}): {completed} calls had completed; the history "
            f"in {session.history} is consistent and the spans are flushed."
        )
        session.say(
            f"Resume with: {PROG} --resume{_state_dir_flag(session.state_dir)}"
            + _history_flag(session.args.history, session.backend)
            + (f" --speed {session.args.speed:g}" if session.args.speed != 1.0 else "")
        )
    else:
        session.say(f"Interrupted ({session.signal}) before the run started.")
    return _EXIT_SIGNAL.get(session.signal, 130)
