"""Benchmark of the features stage against lifetimes' pandas summary, on one synthetic log, in one run.

Each step runs in its own process so its peak RSS is its own: ``python -m bench.features --customers 1000000``.
Writes ``reports/bench/features_<N>.json`` and prints a table with the ratio.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness

CUTOFF = "2021-03-31"  # 90 days before the synthetic log ends


def _features_config(cutoffs: int) -> Any:
    from pipeline.config import CutoffSchedule, FeaturesConfig

    return FeaturesConfig(
        cutoffs=(),
        cutoff_schedule=CutoffSchedule(every_days=28, count=cutoffs),
        horizon_days=90,
        windows_days=(30, 90, 180, 365),
        trend_window_days=90,
        max_customers_per_training_cutoff=2**62,  # every customer: the naive flow featurises them all too
    )


def step(name: str, data: Path, out: Path) -> dict[str, float]:
    """Run one measured step in this process; return its wall time and this process's peak RSS."""
    if name.startswith("project_features"):
        from pipeline import features

        cutoffs = int(name.rsplit("_", 1)[1])
        base = harness.bench_base()
        t0 = time.perf_counter()
        features.run(base, _features_config(cutoffs), data, out / "features.parquet", out / "features.json")
    elif name == "naive_lifetimes_summary":
        import pandas as pd
        from lifetimes.utils import summary_data_from_transaction_data

        t0 = time.perf_counter()
        tx = pd.read_parquet(data)
        tx["ts"] = tx["ts"].dt.tz_localize(None)
        summary = summary_data_from_transaction_data(
            tx, "customer_id", "ts", "amount", observation_period_end=CUTOFF, freq="D"
        )
        summary.to_parquet(out / "naive.parquet")
    else:
        raise SystemExit(f"unknown step {name}")
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), **harness.peak()}


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0], "skip lifetimes' summary (slow at large N)")
    if args.step:
        print(json.dumps(step(args.step, args.data, args.out)))
        return

    from bench.synthetic import generate
    from features.schemas import TRANSACTIONS
    from pipeline.io import write_table

    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        d = Path(tmp)
        log = generate(args.customers, args.seed)
        data = d / "transactions.parquet"
        write_table(log, data, TRANSACTIONS)  # exactly what the ingest stage writes
        n_tx = len(log)
        del log
        steps = ["project_features_1", "project_features_13"]
        if not args.skip_naive:
            steps.append("naive_lifetimes_summary")
        results = {name: harness.measure("bench.features", name, data, d) for name in steps}

    report: dict[str, Any] = {
        "n_customers": args.customers,
        "n_transactions": n_tx,
        "date": dt.date.today().isoformat(),
        "steps": results,
    }
    if "naive_lifetimes_summary" in results:
        report["ratio_naive_over_project_1"] = round(
            results["naive_lifetimes_summary"]["wall_s"] / results["project_features_1"]["wall_s"], 2
        )
    out = Path("reports/bench") / f"features_{args.customers}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{args.customers:,} customers, {n_tx:,} transactions")
    print(f"{'step':<28}{'wall s':>10}{'peak RSS MB':>14}")
    labels = {
        "project_features_1": "features stage, 1 cutoff*",
        "project_features_13": "features stage, 13 cutoffs*",
        "naive_lifetimes_summary": "lifetimes summary (4 cols)",
    }
    for name, r in results.items():
        print(f"{labels[name]:<28}{r['wall_s']:>10.2f}{r['peak_rss_mb']:>14.0f}")
    print("* each also builds the scoring snapshot, labels, ~25 feature columns and validates and writes Parquet")
    if "ratio_naive_over_project_1" in report:
        print(f"lifetimes / project (1 cutoff): {report['ratio_naive_over_project_1']}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
