"""relcert's Airflow room: the only part of `pipeline` that imports Airflow.

- `local`: `relcert run` / `relcert ui` (the DAG on an embedded Airflow, SQLite DB);
- `pools`: the perf pool in the configured metadata DB;
- `outcomes`: the decision as Airflow users see it (the `decision` task's verdict, the DAG
  run's note, the approval Asset and its event);
- `approvals`: what a deployment DAG verifies in the approval events it was triggered by;
- `notifiers`: the DAG's failure/success notifier from the environment (`RELCERT_NOTIFIER`).

Everything else in `pipeline` is plain Python that never imports Airflow (a test scans
the imports), so it can be used, tested and benchmarked without it. Import the modules
of this package directly; this file imports nothing.
"""
