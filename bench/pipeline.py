"""The whole pipeline and its CLV path on one synthetic log of N customers, next to the naive lifetimes flow.

Run from the repository root: ``python -m bench.pipeline --customers 1000000`` (``make bench N=1000000``);
``--skip-naive`` leaves out plain lifetimes where it would not fit in memory.

Not timed, done once in a child process: a seeded log from the MBG/NBD process (bench.synthetic; its parameters are
printed) is written as a raw Parquet file, the way a data team would hand it over.

Timed, each in its own process so that its peak RSS is its own (``wait4``'s ``ru_maxrss``: the process and every
child it waited for):

- **pipeline**: every DVC stage (ingest from Parquet, features, backtest, train_clv, train_churn, snapshot,
  score, measure, assign, report), run with the command line dvc.yaml gives it, in a scratch project folder
  holding the project's params.yaml with only the source and the dates adapted to the synthetic log. MLflow logs
  to a scratch store there. Summed into the **training** run (features, both training stages and the backtest,
  which reruns whenever they do) and the **weekly** run (snapshot, score, measure, assign and report: what every
  week costs once the models are trained; peak = the largest stage's).
- **CLV path, project**: what the clv stage does to score every customer, step by step: its BTYD snapshot from
  the clean transactions (``pipeline.clv.btyd_snapshot``: two DuckDB group-bys, rows in the engine's order), then
  ``models.purchases``, ``models.spend`` and ``models.value``: BG/NBD and Gamma-Gamma on weighted unique
  histories, and P(alive), expected purchases, expected order value and 12-month CLV for every customer.
- **CLV path, naive**: lifetimes as its documentation shows it: ``summary_data_from_transaction_data``,
  ``BetaGeoFitter.fit``, ``GammaGammaFitter.fit`` on the repeat buyers, ``customer_lifetime_value`` over 12
  months, one row per customer, at the same cutoff.

Within one process a sub-step's peak is the high-water mark so far (VmHWM). Prints a table and writes
``reports/bench/<N>.json``: ``n_customers``, ``n_transactions``, ``project`` and ``naive`` (step -> ``wall_s``,
``peak_rss_mb``), ``ratio_clv`` (naive / project wall time of the CLV path) and ``params_max_rel_diff`` (the largest
relative difference between the two BG/NBD and Gamma-Gamma fits; the run fails above 1e-3).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import harness

ROOT = Path(__file__).resolve().parent.parent
CUTOFF = "2021-03-31"  # the CLV path's cutoff: 90 days before the synthetic log ends
PENALIZER_LADDER = (0.0, 0.001, 0.01, 0.1)
STAGES = (
    "ingest",
    "features",
    "backtest",
    "train_clv",
    "train_churn",
    "snapshot",
    "score",
    "measure",
    "assign",
    "report",
)
# The two runs a team operates: training on a schedule, and every week's scoring with the serving models.
# A retraining reruns the backtest too (its features changed): the scorer that serves is chosen on its evidence.
RUNS = {
    "training": ("features", "backtest", "train_clv", "train_churn"),
    "weekly": ("snapshot", "score", "measure", "assign", "report"),
}
CLV_STEPS = ("rfm_summary", "bgnbd_fit", "gamma_gamma_fit", "clv_12_months")
PARAMS_AGREEMENT = 1e-3


# --- child processes --------------------------------------------------------------------------------------------


def run_child(args: list[str], cwd: Path, env: dict[str, str] | None = None, log: Path | None = None) -> dict[str, Any]:
    """Run a command, returning its wall time, its process tree's peak RSS and its last stdout line; its stderr (the
    stage's log) is copied to ``log`` when given.

    The child is reaped with ``wait4``, whose ``ru_maxrss`` is the largest peak among the child and the descendants
    it waited for (not their sum). This process stays small (it never loads the data), so a forked child starts
    near zero.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        lines, errors = out.read().strip().splitlines(), err.read()
    if log is not None:
        log.write_text(errors, encoding="utf-8")
    if code:
        raise SystemExit(f"{' '.join(args[:4])} ... failed (exit {code}):\n{errors[-4000:]}")
    return {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "stdout": lines[-1] if lines else "",
    }


class Laps:
    """Wall time of each sub-step since the previous one, with the process's peak RSS so far (VmHWM)."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}
        self._t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = {"wall_s": round(now - self._t, 3), "peak_rss_mb": harness.status_mb("VmHWM")}
        self._t = now


# --- steps that run in a child process (``--step``) ---------------------------------------------------------------


def generate_step(n_customers: int, seed: int, out: Path) -> dict[str, Any]:
    """Write the synthetic log as a raw Parquet file with the column names of the bench's ingest params."""
    from bench.synthetic import ProcessParams, generate

    log = generate(n_customers, seed)
    log.rename(columns={"ts": "purchased_at"}).drop(columns="order_id").to_parquet(out, index=False)
    return {"n_transactions": len(log), "process": dataclasses.asdict(ProcessParams())}


def project_clv_step(transactions: Path, out: Path) -> dict[str, Any]:
    """The CLV path at ``CUTOFF``: the train_clv stage's BTYD snapshot and fits (``pipeline.clv``), then the
    score stage's valuation of every customer."""
    import numpy as np

    from models.histories import histories
    from models.purchases import PurchaseModel
    from models.spend import SpendModel, usable_spend
    from models.value import score
    from pipeline.clv import btyd_snapshot

    base = harness.bench_base()
    lap = Laps()
    frame = btyd_snapshot(transactions, base, dt.date.fromisoformat(CUTOFF))
    f, r, T, m = (frame[c].to_numpy(np.float64) for c in ("frequency", "recency", "T", "monetary_value"))
    lap("rfm_summary")
    hist = histories(f, r, T)
    purchases = PurchaseModel("bgnbd", PENALIZER_LADDER).fit_histories(hist)
    lap("bgnbd_fit")
    ok = usable_spend(f, m)
    spend = SpendModel(PENALIZER_LADDER).fit(f[ok], m[ok])
    lap("gamma_gamma_fit")
    settings = harness.clv_settings()
    scored = score(purchases, spend.params_, f, r, T, m, settings, customer_histories=hist)
    lap("clv_12_months")
    return {
        "steps": lap.steps,
        "params": {**purchases.params_, **spend.params_},
        "customers": len(frame),
        "unique_histories": purchases.n_histories_,
        "clv_total": float(scored["clv"].sum()),
    }


def naive_clv_step(transactions: Path) -> dict[str, Any]:
    """lifetimes' documented flow at ``CUTOFF``, one row per customer."""
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import summary_data_from_transaction_data

    lap = Laps()
    tx = pd.read_parquet(transactions, columns=["customer_id", "ts", "amount"])
    tx["ts"] = tx["ts"].dt.tz_convert(None)
    summary = summary_data_from_transaction_data(
        tx, "customer_id", "ts", "amount", observation_period_end=CUTOFF, freq="D"
    )
    del tx
    lap("rfm_summary")
    f, r, T, m = (summary[c] for c in ("frequency", "recency", "T", "monetary_value"))
    bgf = BetaGeoFitter().fit(f, r, T)
    lap("bgnbd_fit")
    repeat = (f > 0) & (m > 0)
    ggf = GammaGammaFitter().fit(f[repeat], m[repeat])
    lap("gamma_gamma_fit")
    value = ggf.customer_lifetime_value(
        bgf, f, r, T, m, time=harness.MONTHS, discount_rate=harness.DISCOUNT_MONTHLY, freq="D"
    )
    lap("clv_12_months")
    return {
        "steps": lap.steps,
        "params": {**{k: float(v) for k, v in bgf.params_.items()}, **{k: float(v) for k, v in ggf.params_.items()}},
        "customers": len(summary),
        "clv_total": float(value.sum()),
    }


# --- the run ------------------------------------------------------------------------------------------------------


# With --skip-backtest, what serves is set instead of chosen: the backtest's choices on this synthetic log at 1M and
# 10M customers for the churn scorer (btyd: the model did not beat it), and the BG/NBD purchase model for CLV.
FIXED_SERVING = {"clv": {"model": "bgnbd"}, "score": {"churn_scorer": "btyd"}}


def bench_params(source: Path, skip_backtest: bool = False) -> dict[str, Any]:
    """The project's params.yaml, pointed at the synthetic log and with dates that fit it; with ``skip_backtest``
    the serving models set as ``FIXED_SERVING`` says (nothing else changes)."""
    params: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    if skip_backtest:
        for name, values in FIXED_SERVING.items():
            params[name].update(values)
    params["ingest"].update(source=str(source), timezone="UTC", duplicate_key=[], cancellation_prefix=None)
    params["ingest"]["columns"] = {
        "customer_id": "customer_id",
        "timestamp": "purchased_at",
        "amount": "amount",
        "quantity": None,
        "unit_price": None,
        "order_id": None,
    }
    params["features"]["cutoffs"] = []  # CDNOW's calibration date is not in the synthetic log's years
    params["clv"]["calibration_cutoff"] = None  # the latest training cutoff
    params["score"]["as_of"] = None
    return params


def stage_commands() -> dict[str, list[str]]:
    """Each stage's command line from dvc.yaml, run with this interpreter."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out = {}
    for name in STAGES:
        argv = shlex.split(stages[name]["cmd"])
        out[name] = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
    return out


def path_total(steps: dict[str, dict[str, float]], process: dict[str, Any]) -> dict[str, float]:
    """The CLV path's work: its sub-steps' wall time summed (interpreter start and imports are left out, a fixed
    second or so), the process tree's peak RSS, and the whole process's wall time for reference."""
    return {
        "wall_s": round(sum(s["wall_s"] for s in steps.values()), 3),
        "peak_rss_mb": process["peak_rss_mb"],
        "process_wall_s": process["wall_s"],
    }


def child(step: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.pipeline", "--step", step, *extra]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-naive", action="store_true", help="leave out plain lifetimes (it needs ~0.6 GB per 1M)")
    p.add_argument("--skip-pipeline", action="store_true", help="time ingest and the CLV path only")
    p.add_argument(
        "--skip-backtest",
        action="store_true",
        help="leave the backtest stage out, the serving models set in params instead (FIXED_SERVING)",
    )
    p.add_argument("--report", type=Path, help="where to write the JSON (default: reports/bench/<N>.json)")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step == "generate":
        print(json.dumps(generate_step(args.customers, args.seed, args.out)))
        return
    if args.step == "project_clv":
        print(json.dumps(project_clv_step(args.data, args.out)))
        return
    if args.step == "naive_clv":
        print(json.dumps(naive_clv_step(args.data)))
        return

    out = args.report or ROOT / "reports" / "bench" / f"{args.customers}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        d = Path(tmp)
        raw = d / "raw_transactions.parquet"
        gen = run_child(
            child("generate", "--customers", str(args.customers), "--seed", str(args.seed), "--out", str(raw)), ROOT
        )
        info = json.loads(gen["stdout"])
        print(
            f"synthetic log: {args.customers:,} customers, {info['n_transactions']:,} transactions; MBG/NBD process "
            f"{info['process']}; generated in {gen['wall_s']:.1f} s (not timed below)"
        )
        (d / "params.yaml").write_text(yaml.safe_dump(bench_params(raw, args.skip_backtest)), encoding="utf-8")
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/mlflow.db"}
        logs = out.parent / f"{out.stem}-logs"  # each stage's log, e.g. the churn stage's scoring time
        logs.mkdir(parents=True, exist_ok=True)
        project: dict[str, dict[str, float]] = {}
        stages: tuple[str, ...] = ("ingest",) if args.skip_pipeline else STAGES
        if args.skip_backtest:
            stages = tuple(s for s in stages if s != "backtest")
        for name, cmd in stage_commands().items():
            if name not in stages:
                continue
            r = run_child(cmd, d, env, log=logs / f"{name}.log")
            project[name] = {"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]}
            print(f"  stage {name:<24}{r['wall_s']:>9.1f} s {r['peak_rss_mb']:>9.0f} MB peak")
        if not args.skip_pipeline:
            for run, part in {**RUNS, "pipeline": STAGES}.items():
                ran = [s for s in part if s in project]  # the backtest is left out with --skip-backtest
                project[run] = {
                    "wall_s": round(sum(project[s]["wall_s"] for s in ran), 3),
                    "peak_rss_mb": max(project[s]["peak_rss_mb"] for s in ran),
                }
        tx = d / "data" / "transactions.parquet"  # what ingest wrote: both CLV paths start from it
        scratch = d / "clv_path"
        scratch.mkdir()
        ours = run_child(child("project_clv", "--data", str(tx), "--out", str(scratch)), ROOT)
        ours_fit = json.loads(ours["stdout"])
        for k, v in ours_fit["steps"].items():
            project[f"clv_path/{k}"] = v
        project["clv_path"] = path_total(ours_fit["steps"], ours)
        naive: dict[str, dict[str, float]] = {}
        naive_fit: dict[str, Any] = {}
        if not args.skip_naive:
            theirs = run_child(child("naive_clv", "--data", str(tx)), ROOT)
            naive_fit = json.loads(theirs["stdout"])
            naive = {f"clv_path/{k}": v for k, v in naive_fit["steps"].items()}
            naive["clv_path"] = path_total(naive_fit["steps"], theirs)

    report: dict[str, Any] = {
        "n_customers": args.customers,
        "n_transactions": info["n_transactions"],
        "date": dt.date.today().isoformat(),
        "cutoff": CUTOFF,
        "unique_histories": ours_fit["unique_histories"],
        "project": project,
        "naive": naive,
        "ratio_clv": round(naive["clv_path"]["wall_s"] / project["clv_path"]["wall_s"], 2) if naive else None,
        "params_max_rel_diff": None,
        "backtest": f"skipped; serving set in params: {FIXED_SERVING}" if args.skip_backtest else "run",
        "params": {"project": ours_fit["params"], "naive": naive_fit.get("params")},
        "clv_total": {"project": ours_fit["clv_total"], "naive": naive_fit.get("clv_total")},
    }
    if naive_fit:
        ref = naive_fit["params"]
        report["params_max_rel_diff"] = max(abs(ours_fit["params"][k] - v) / abs(v) for k, v in ref.items())
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    show(report, out)
    if report["params_max_rel_diff"] is not None and report["params_max_rel_diff"] > PARAMS_AGREEMENT:
        raise SystemExit(
            f"the project's and lifetimes' fits differ by {report['params_max_rel_diff']:.3g} relative "
            f"(more than {PARAMS_AGREEMENT}): the comparison is not like for like"
        )


def show(report: dict[str, Any], out: Path) -> None:
    """The table: each step's wall time and peak RSS, project next to naive, and the ratio."""
    project, naive = report["project"], report["naive"]
    print(f"\n{'step':<28}{'project s':>11}{'peak MB':>9}{'naive s':>11}{'peak MB':>9}{'naive/project':>15}")
    for name in [*STAGES, *RUNS, "pipeline", *(f"clv_path/{s}" for s in CLV_STEPS), "clv_path"]:
        if name not in project:
            continue
        ours, theirs = project[name], naive.get(name)
        row = f"{name:<28}{ours['wall_s']:>11.2f}{ours['peak_rss_mb']:>9.0f}"
        if theirs:
            row += f"{theirs['wall_s']:>11.2f}{theirs['peak_rss_mb']:>9.0f}{theirs['wall_s'] / ours['wall_s']:>14.1f}x"
        print(row)
    if report["ratio_clv"] is not None:
        print(
            f"CLV path: {report['ratio_clv']}x faster than plain lifetimes; fits agree to "
            f"{report['params_max_rel_diff']:.2g} relative; total CLV {report['clv_total']['project']:,.2f} vs "
            f"{report['clv_total']['naive']:,.2f}"
        )
    print(f"{report['unique_histories']:,} unique (frequency, recency, T) histories at {report['cutoff']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
