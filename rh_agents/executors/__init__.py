"""Executors that run the items of parallel groups outside the event loop.

The core defines the executor interface (:mod:`rh_agents.core.executors`: work items,
:class:`~rh_agents.core.executors.ItemExecutor`, the remote-call types) and runs items
in the event loop by default. This package implements it from above:

* :class:`ProcessPoolItemExecutor` (:mod:`.process`): worker processes of this machine,
  for CPU-bound work; what it ships must be picklable with the standard :mod:`pickle`.
* :class:`DaskExecutor` (:mod:`.dask`, the ``dask`` extra): a Dask cluster, work shipped
  with cloudpickle. Importing it does not import dask.

Both build on :class:`RemoteExecutorBase` (:mod:`.remote`, the coordinator side: what is
shipped) and on :func:`execute_remote` / :func:`unpack_outcome` (:mod:`.worker`, the
worker side: run it, send the outcome back). Work travels with the trace context of the
current span, and workers open ``remote ...`` spans under it
(:mod:`rh_agents.telemetry.remote`).

Example::

    async with ProcessPoolItemExecutor(4) as pool:
        async with state.parallel(max_workers=4, executor=pool) as p:
            for doc in docs:
                p.add(functools.partial(score, doc))
"""

from __future__ import annotations

from rh_agents.executors.dask import DaskExecutor
from rh_agents.executors.process import ProcessPoolItemExecutor
from rh_agents.executors.remote import RemoteExecutorBase, dumps_task, task_key
from rh_agents.executors.worker import execute_remote, unpack_outcome

__all__ = [
    "DaskExecutor",
    "ProcessPoolItemExecutor",
    "RemoteExecutorBase",
    "dumps_task",
    "execute_remote",
    "task_key",
    "unpack_outcome",
]
