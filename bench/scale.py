"""Scale-out: wall time to certify 1, 2 and 4 models with one Celery worker and with two.

    .venv/bin/python -m bench.scale [--models 1 2 4] [--workers 1 2] [--profile cluster|smoke]

Needs PostgreSQL (:5432) and Redis (:6379). For each worker count it starts a real
deployment (the test suite's AirflowCluster: its own Postgres database and Redis key
prefix, scheduler, DAG processor, API server, N Celery workers with concurrency 1 and
distinct hostnames), then runs the DAG once per model count (models files with 1, 2 or 4
built models) and reads each run's wall time and its tasks' durations from the metadata DB.
Everything it starts is stopped and its database dropped.

It prints, per model count, the wall time with 1 and 2 workers, the speed-up (1-worker
time / 2-worker time), and the busy ratio (sum of task durations / wall time: how many
tasks ran at once on average). On one 2-core machine the speed-up is bounded: only the
per-model builds fan out (load, stress and infra hold the one-slot perf pool so they never
share CPUs, and gates chain), and both workers share the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

BUILDERS = (
    ("quality_predictor", "pipeline.build.examples:build_quality_predictor"),
    ("routing_classifier", "pipeline.build.examples:build_routing_classifier"),
)


def models_file(folder: Path, count: int) -> Path:
    """A models file with `count` built models (the two examples, then numbered copies)."""
    import yaml

    models = []
    for i in range(count):
        name, builder = BUILDERS[i % 2]
        suffix = "" if i < 2 else f"_{i // 2 + 1}"
        models.append({"name": f"{name}{suffix}", "builder": builder, "version": "1.0"})
    path = folder / f"models-{count}.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return path


def run_once(cluster, conf: dict, logical_date: str, timeout_s: float) -> dict:
    from tests.integration.airflow_cluster import DAG_ID

    before = {r["run_id"] for r in cluster.runs()}
    trigger = cluster.airflow(
        "dags", "trigger", DAG_ID, "-c", json.dumps(conf), "--logical-date", logical_date
    )
    if trigger.returncode != 0:
        raise RuntimeError(trigger.stderr[-2000:])
    runs = cluster.wait_for_runs(len(before) + 1, timeout_s=timeout_s)
    run = next(r for r in runs if r["run_id"] not in before)
    ((start, end),) = cluster.query(
        "SELECT start_date, end_date FROM dag_run WHERE run_id = %s", (run["run_id"],)
    )
    tis = cluster.task_instances(run["run_id"])
    busy = sum(
        (ti["end_date"] - ti["start_date"]).total_seconds()
        for ti in tis
        if ti["start_date"] and ti["end_date"]
    )
    wall = (end - start).total_seconds()
    return {
        "state": run["state"],
        "wall_s": wall,
        "busy_s": busy,
        "hosts": sorted({ti["hostname"] for ti in tis if ti["hostname"]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--profile",
        default="cluster",
        choices=["cluster", "smoke"],
        help="cluster: the test suite's small profile (about a minute per run); "
        "smoke: the project's smoke profile",
    )
    parser.add_argument("--timeout", type=float, default=1200, help="per run, seconds")
    args = parser.parse_args()

    from tests.integration.airflow_cluster import (
        DAG_ID,
        AirflowCluster,
        postgres_available,
        redis_available,
    )

    if not (postgres_available() and redis_available()):
        sys.exit("bench/scale.py needs PostgreSQL on :5432 and Redis on :6379")
    results: dict[tuple[int, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="relcert-scale-") as tmp:
        root = Path(tmp)
        files = {n: models_file(root, n) for n in args.models}
        for workers in args.workers:
            # the models files are generated here: a models folder of the deployment
            extra = {"RELCERT_MODELS_DIRS": os.pathsep.join([str(root), str(PROJECT / "include")])}
            if args.profile == "smoke":
                extra["RELCERT_PROFILES_FILE"] = str(PROJECT / "include" / "profiles.yaml")
            cluster = AirflowCluster(root / f"w{workers}", "CeleryExecutor", extra_env=extra)
            try:
                started = time.monotonic()
                cluster.start()
                for i in range(workers):
                    cluster.start_worker(f"scale-worker-{i + 1}", concurrency=1)
                cluster.wait_for_dag()
                unpaused = cluster.airflow("dags", "unpause", DAG_ID)
                if unpaused.returncode != 0:
                    raise RuntimeError(unpaused.stderr[-2000:])
                # unpausing starts the latest scheduled run: let it finish first
                cluster.wait_for_runs(1, timeout_s=args.timeout)
                print(
                    f"== {workers} worker(s) up and warmed in {time.monotonic() - started:.0f} s",
                    flush=True,
                )
                for day, count in enumerate(args.models, start=10):
                    conf = {"models_file": str(files[count]), "reason": "bench/scale.py"}
                    result = run_once(
                        cluster, conf, f"2026-03-{day:02d}T02:00:00+00:00", args.timeout
                    )
                    results[(count, workers)] = result
                    print(
                        f"   {count} model(s): {result['state']:7s} wall {result['wall_s']:6.1f} s"
                        f"  busy {result['busy_s']:6.1f} s  hosts {','.join(result['hosts'])}",
                        flush=True,
                    )
            finally:
                cluster.stop()

    print()
    print(f"{'models':>6} " + " ".join(f"{f'{w} worker(s)':>12}" for w in args.workers), end="")
    print("   speed-up   busy ratio (tasks at once)")
    for count in args.models:
        walls = [results[(count, w)]["wall_s"] for w in args.workers]
        line = f"{count:>6} " + " ".join(f"{w:>10.1f} s" for w in walls)
        if len(walls) >= 2:
            line += f"   {walls[0] / walls[-1]:7.2f}x"
        ratios = [
            results[(count, w)]["busy_s"] / results[(count, w)]["wall_s"] for w in args.workers
        ]
        line += "   " + " / ".join(f"{r:.2f}" for r in ratios)
        print(line)
    if len(args.models) >= 2:
        first, last = args.models[0], args.models[-1]
        for w in args.workers:
            grow = results[(last, w)]["wall_s"] / results[(first, w)]["wall_s"]
            print(f"{w} worker(s): {last} models take {grow:.2f}x the time of {first}")
    failed = [k for k, v in results.items() if v["state"] != "success"]
    if failed:
        sys.exit(f"runs that did not succeed (models, workers): {failed}")


if __name__ == "__main__":
    main()
