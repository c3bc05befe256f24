"""The Airflow pool of the performance-sensitive tasks, in the configured metadata DB.

Its name and description are Airflow-free settings of `pipeline.scaleout` (`PERF_POOL`,
`perf_task_args`), which the DAG and the Kubernetes templates read too.
"""

from __future__ import annotations

from pipeline.scaleout import PERF_POOL_DESCRIPTION, perf_task_args

__all__ = ["ensure_perf_pool"]


def ensure_perf_pool(slots: int = 1) -> bool:
    """Create the perf pool in the configured Airflow metadata DB unless it exists (an
    existing pool keeps its slots: operators size it). Returns True if it was created."""
    from airflow.models.pool import Pool

    name = perf_task_args()["pool"]
    if Pool.get_pool(name) is not None:
        return False
    Pool.create_or_update_pool(
        name, slots=slots, description=PERF_POOL_DESCRIPTION, include_deferred=False
    )
    return True
