"""Run parallel-group items on a Dask cluster (compatibility module).

The Dask executor lives in :mod:`rh_agents.executors.dask`; this module re-exports its
public names, so ``from rh_agents.distributed import DaskExecutor`` and
``dask worker ... --preload rh_agents.distributed`` keep working. Importing it does not
import dask.
"""

from __future__ import annotations

from rh_agents.executors.dask import DaskExecutor, dask_setup, dask_teardown, worker_telemetry

__all__ = ["DaskExecutor", "dask_setup", "dask_teardown", "worker_telemetry"]
