"""Budget check: every stage and gate on a fresh run folder, timed, for one profile.

    .venv/bin/python bench/stages.py [--profile smoke|nightly|release] [--run-dir DIR]

Prints the wall time of each stage (and its gate), whether every gate passed and every
scenario was valid, and on its last line the total against the budget (smoke <= 3 min,
nightly <= 15 min).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

BUDGET_S = {"smoke": 180, "nightly": 900, "release": 1800}
SNAPSHOT = "2026-01-15"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", choices=sorted(BUDGET_S))
    parser.add_argument("--run-dir", type=Path, help="keep the run here (default: temporary)")
    args = parser.parse_args()

    from pipeline.stages import STAGE_NAMES, run_stage

    with tempfile.TemporaryDirectory(prefix="relcert-stages-") as tmp:
        run = args.run_dir or Path(tmp) / "run"
        started = time.perf_counter()
        rows = []
        for name in STAGE_NAMES:
            t = time.perf_counter()
            result = run_stage(
                name,
                run,
                args.profile,
                snapshot_date=SNAPSHOT,
                progress=lambda line: print(f"  {line}", flush=True),
            )
            rows.append(
                (name, time.perf_counter() - t, result["gate"]["success"], result["gate"]["failed"])
            )
            print(
                f"{name:12s} {rows[-1][1]:7.1f} s  gate "
                f"{'passed' if rows[-1][2] else 'FAILED ' + '; '.join(rows[-1][3])}",
                flush=True,
            )
        total = time.perf_counter() - started
        scenarios = json.loads((run / "stages/load/summary.json").read_text())
        criteria = (run / "stages/certify/criteria.csv").read_text().splitlines()
    all_gates = all(r[2] for r in rows)
    print()
    print(
        f"capacity {scenarios['capacity']['max_sustained_rps']:.0f} req/s"
        f"{' (search cap)' if scenarios['capacity']['capped'] else ''}; "
        f"{len(criteria) - 1} criteria"
    )
    print(
        f"BUDGET {args.profile}: {total:.0f} s of {BUDGET_S[args.profile]} s "
        f"({total / BUDGET_S[args.profile]:.2f} of budget); all gates passed: {all_gates}"
    )


if __name__ == "__main__":
    main()
