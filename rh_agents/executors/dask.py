"""Run parallel-group items on a Dask cluster (the ``dask`` extra).

::

    from rh_agents.executors import DaskExecutor

    async with DaskExecutor("tcp://scheduler:8786") as dask:
        async with state.parallel(max_workers=32, executor=dask, max_retries=2) as p:
            for doc in docs:
                p.add(lambda doc=doc: ExecutionEvent(actor=summarize)(doc, {}, state))
            results = await p.gather()

The group's semantics stay in the coordinator (limits, retries, circuit breaker,
timeouts, history, spans, metrics). For an ExecutionEvent call only the actor's handler
runs on the cluster, with ``execution_state=None``; any other item's factory is shipped
and its coroutine runs in a worker. Work is serialized with cloudpickle (closures and
lambdas travel by value; modules they import must be installed on the workers).

Each task's key is derived from the state id, the item's address and the attempt, so a
resumed run that submits an item still known to the cluster gets the existing task
instead of running it twice. Cancelling an item (FAIL_FAST, a group timeout, leaving a
stream) cancels its Dask future; a worker that dies mid-item surfaces as
:class:`~rh_agents.core.executors.WorkerLostError` once the scheduler gives up on the task
(``distributed.scheduler.allowed-failures``), which the group retries under its
``max_retries``.

Workers export their ``remote ...`` spans through their own tracer provider: register
:func:`worker_telemetry` as a worker plugin, or start workers with
``--preload rh_agents.executors.dask`` (or its old name ``rh_agents.distributed``),
configured from the ``OTEL_*`` variables.

Importing this module does not import dask; it is imported when first needed.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from rh_agents.core._aio import uninterrupted
from rh_agents.core.errors import InvalidArgumentError, LifecycleError
from rh_agents.core.executors import (
    RemoteCancelledError,
    RemoteExecutionError,
    RemoteTask,
    WorkerLostError,
)
from rh_agents.executors.remote import RemoteExecutorBase, dumps_task, task_key
from rh_agents.executors.worker import execute_remote, unpack_outcome

if TYPE_CHECKING:
    from distributed import Client

    from rh_agents.telemetry import TelemetryHandle

__all__ = ["DaskExecutor", "dask_setup", "dask_teardown", "worker_telemetry"]

_INSTALL_HINT = "DaskExecutor needs dask.distributed: pip install 'rh_agents[dask]'."


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ImportError(_INSTALL_HINT) from exc
    return distributed


def _cloudpickle_dumps(obj: Any) -> bytes:
    import importlib

    return bytes(importlib.import_module("cloudpickle").dumps(obj))


def _dask_task(payload: bytes) -> bytes:
    """What each Dask task runs in a worker: one RemoteCall or RemoteItem."""
    try:
        from distributed import get_worker

        worker = str(get_worker().address)
    except ValueError:  # pragma: no cover - run outside a worker
        worker = f"pid {os.getpid()}"
    return execute_remote(payload, dumps=_cloudpickle_dumps, executor="dask", worker=worker)


async def _result_on_client_loop(future: Any) -> Any:
    return await future


async def _cancel_on_client_loop(client: Any, future: Any) -> None:
    await client.cancel([future])


class DaskExecutor(RemoteExecutorBase):
    """Runs the items of parallel groups on a Dask cluster.

    Args:
        client: a ``distributed.Client`` (asynchronous on this event loop, or a
            synchronous one running its own loop), or the scheduler address to connect
            to (``"tcp://host:8786"``; also anything with a ``scheduler_address``, such
            as a cluster object). A client this executor creates is closed by
            :meth:`close` (or ``async with``); one passed in is left to its owner.
        key_prefix: the first part of every task key (shown on the Dask dashboard).

    Raises:
        ImportError: dask.distributed is not installed (``pip install 'rh_agents[dask]'``).
    """

    executor_name = "dask"

    def __init__(self, client: Client | str | Any, *, key_prefix: str = "rh_agents") -> None:
        distributed = _import_distributed()
        self._client: Any = None
        self._address: str | None = None
        address = client if isinstance(client, str) else getattr(client, "scheduler_address", None)
        if isinstance(client, distributed.Client):
            self._client = client
        elif isinstance(address, str):
            self._address = address
        else:
            raise InvalidArgumentError(
                f"DaskExecutor takes a distributed.Client or a scheduler address such as "
                f"'tcp://127.0.0.1:8786', got {type(client).__name__}."
            )
        if not isinstance(key_prefix, str) or not key_prefix:
            raise InvalidArgumentError(
                f"key_prefix must be a non-empty string, got {key_prefix!r}."
            )
        self.key_prefix = key_prefix
        self._owned = self._client is None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        where = self._address or getattr(self._client, "scheduler_address", None) or "client"
        return f"DaskExecutor({where!r})"

    @property
    def client(self) -> Client | None:
        """The Dask client (None until first use when built from an address)."""
        client: Client | None = self._client
        return client

    async def _get_client(self) -> Any:
        if self._closed:
            raise LifecycleError("This DaskExecutor was closed; create a new one.")
        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                from distributed import Client

                self._client = await Client(self._address, asynchronous=True)  # type: ignore[no-untyped-call]
        return self._client

    async def _ship(self, task: RemoteTask) -> Any:
        client = await self._get_client()
        payload = dumps_task(task, _cloudpickle_dumps, "a Dask worker")
        future = client.submit(_dask_task, payload, key=task_key(task, self.key_prefix), pure=False)
        try:
            data = await self._wait(client, future)
        except asyncio.CancelledError:
            await uninterrupted(self._cancel(client, future))
            raise
        except Exception as exc:
            raise _translate(exc, task) from exc
        finally:
            future.release()
        return unpack_outcome(data)

    @staticmethod
    def _on_this_loop(client: Any) -> bool:
        return bool(client.asynchronous)

    async def _wait(self, client: Any, future: Any) -> Any:
        if self._on_this_loop(client):
            return await future
        # A synchronous client runs its own event loop in another thread.
        loop = client.loop.asyncio_loop
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_result_on_client_loop(future), loop)
        )

    async def _cancel(self, client: Any, future: Any) -> None:
        if client.status in ("closing", "closed"):
            return
        if self._on_this_loop(client):
            await client.cancel([future])
        else:
            loop = client.loop.asyncio_loop
            asyncio.run_coroutine_threadsafe(_cancel_on_client_loop(client, future), loop)

    async def close(self) -> None:
        """Close the client if this executor created it (idempotent)."""
        self._closed = True
        client, owned = self._client, self._owned
        self._client = None
        if client is not None and owned:
            await client.close()

    async def __aenter__(self) -> DaskExecutor:
        await self._get_client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _translate(exc: Exception, task: RemoteTask) -> Exception:
    """The rh_agents exception for a Dask failure of ``task``'s future."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    what = f"'{task.name or task.kind}'"
    if isinstance(exc, KilledWorker):
        return WorkerLostError(
            f"The Dask worker running {what} died (KilledWorker: {exc}); the scheduler "
            "gave up on the task. The group retries the item if it has max_retries."
        )
    if isinstance(exc, FutureCancelledError):
        return RemoteCancelledError(
            f"The cluster cancelled the Dask task of {what} ({exc}), e.g. because the "
            "cluster restarted or another client cancelled it."
        )
    return RemoteExecutionError(
        f"The Dask task of {what} could not run or report back: {type(exc).__name__}: "
        f"{exc}. Check that the scheduler is reachable and the workers have rh_agents and "
        "the item's code installed."
    )


# --------------------------------------------------------------------------- worker telemetry

_plugin_class: type | None = None


def worker_telemetry(**setup_kwargs: Any) -> Any:
    """A Dask worker plugin that configures OpenTelemetry in each worker.

    On every worker (also ones that start or restart later) it calls
    :func:`rh_agents.telemetry.remote.setup_worker_telemetry` with ``setup_kwargs``
    (the arguments of :func:`rh_agents.telemetry.setup`; a ``{pid}`` in ``trace_file``
    gives each worker its own file) and shuts it down, flushing spans, when the worker
    closes::

        await client.register_plugin(worker_telemetry(service_name="rh-agents-worker"))
    """
    global _plugin_class
    if _plugin_class is None:
        from distributed.diagnostics.plugin import WorkerPlugin

        class WorkerTelemetry(WorkerPlugin):
            name = "rh_agents-telemetry"

            def __init__(self, kwargs: dict[str, Any]) -> None:
                self.kwargs = kwargs
                self.handle: TelemetryHandle | None = None

            def setup(self, worker: Any) -> None:
                from rh_agents.telemetry.remote import setup_worker_telemetry

                self.handle = setup_worker_telemetry(**self.kwargs)

            def teardown(self, worker: Any) -> None:
                handle, self.handle = self.handle, None
                if handle is not None:
                    _stop_worker_telemetry(handle)

        _plugin_class = WorkerTelemetry
    return _plugin_class(dict(setup_kwargs))


_preloaded: TelemetryHandle | None = None


def dask_setup(worker: Any) -> None:
    """Dask preload hook (``dask worker ... --preload rh_agents.executors.dask``).

    Configures the worker's telemetry from the standard ``OTEL_*`` variables; without
    an OTLP endpoint, spans go to ``.rh_agents/spans-worker-{pid}.jsonl``.
    """
    global _preloaded
    kwargs: dict[str, Any] = {}
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        kwargs["trace_file"] = os.path.join(".rh_agents", "spans-worker-{pid}.jsonl")
    from rh_agents.telemetry.remote import setup_worker_telemetry

    _preloaded = setup_worker_telemetry(**kwargs)


def dask_teardown(worker: Any) -> None:
    """Dask preload hook: flush and stop what :func:`dask_setup` configured."""
    global _preloaded
    handle, _preloaded = _preloaded, None
    if handle is not None:
        _stop_worker_telemetry(handle)


def _stop_worker_telemetry(handle: TelemetryHandle) -> None:
    from rh_agents.telemetry.remote import use_worker_telemetry

    use_worker_telemetry(None)
    handle.shutdown()
