"""Benchmark of the project's CLV fitting (models.purchases, models.spend) against plain lifetimes, on one
synthetic log, in one run.

Run from the repository root: ``python -m bench.clv --customers 1000000`` (``--skip-naive`` skips plain lifetimes).

Not timed, done once: the synthetic log (bench.synthetic) is written as the ingest stage would, the features stage
builds the BTYD summary (frequency, recency, T, monetary_value, in days) at one training cutoff, and its training
rows are written to ``summary.parquet``. Each measured step then runs in its own process and reads that file;
wall time is measured inside the step, after reading it. Peak RSS is the step's VmHWM (Linux), not ``ru_maxrss``,
which a child inherits from its parent's peak (see ``_peak``); both are in the JSON, with the RSS after imports
and reading the input. The steps:

- ``project``: ``PurchaseModel("bgnbd")`` and ``SpendModel`` on weighted unique histories, then ``clv.score``
  (P(alive), expected purchases over 90 days, expected order value, 12-month CLV at 1% a month, 30-day months);
- ``naive_lifetimes``: lifetimes' ``BetaGeoFitter`` and ``GammaGammaFitter`` unweighted, one row per customer,
  and the same four outputs (``customer_lifetime_value(..., time=12, discount_rate=0.01, freq="D")``).

Prints a table (wall s, peak RSS MB, ratios lifetimes / project, parameter and output agreement) and writes
``reports/bench/clv_<N>.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from bench import harness
from bench.features import CUTOFF

PENALIZER_LADDER = (0.0, 0.001, 0.01, 0.1)
SUMMARY_COLUMNS = ["frequency", "recency", "T", "monetary_value"]
OUTPUTS = ["p_alive", "expected_purchases", "expected_order_value", "clv"]
BGNBD = ("r", "alpha", "a", "b")
GG = ("p", "q", "v")
STEPS = {"project": "project (unique histories)", "naive_lifetimes": "lifetimes, 1 row/customer"}


def _project(data: Path, out: Path) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from models.purchases import PurchaseModel
    from models.spend import SpendModel, usable_spend
    from models.value import score

    frame = pd.read_parquet(data)
    f, r, T, m = (frame[c].to_numpy(np.float64) for c in SUMMARY_COLUMNS)
    rss_read = harness.status_mb("VmRSS")
    t0 = time.perf_counter()
    pm = PurchaseModel("bgnbd", PENALIZER_LADDER).fit(f, r, T)
    ok = usable_spend(f, m)
    sm = SpendModel(PENALIZER_LADDER).fit(f[ok], m[ok])
    settings = harness.clv_settings()
    scored = score(pm, sm.params_, f, r, T, m, settings)
    wall = time.perf_counter() - t0
    peak = harness.peak()
    pd.DataFrame(scored).to_parquet(out / "project.parquet")
    return {
        "wall_s": round(wall, 3),
        **peak,
        "rss_after_read_mb": rss_read,
        "bgnbd": pm.params_,
        "gamma_gamma": sm.params_,
        "bgnbd_mean_nll": float(pm.fitter_._negative_log_likelihood_),
        "n_histories": pm.n_histories_,
        "n_spend_histories": sm.n_histories_,
        "bgnbd_penalizer_coef": pm.penalizer_coef_,
        "bgnbd_variant": pm.variant_,
        "bgnbd_attempts": pm.attempts_,
        "gamma_gamma_attempts": sm.attempts_,
    }


def _naive(data: Path, out: Path) -> dict[str, Any]:
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import ConvergenceError

    frame = pd.read_parquet(data)
    f, r, T, m = (frame[c] for c in SUMMARY_COLUMNS)  # Series: customer_lifetime_value needs frequency.index
    result: dict[str, Any] = {}
    printed = io.StringIO()  # lifetimes prints the optimiser state when a fit fails
    rss_read = harness.status_mb("VmRSS")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            bgf = BetaGeoFitter().fit(f, r, T)
            ok = (f > 0) & (m > 0)
            ggf = GammaGammaFitter().fit(f[ok], m[ok])
            # All customers, monetary_value as is: lifetimes' Gamma-Gamma expectation ignores m when frequency is 0
            # (weight p x / (p x + q - 1) = 0) and gives the population mean, as the project does.
            outputs = {
                "p_alive": bgf.conditional_probability_alive(f, r, T),
                "expected_purchases": bgf.conditional_expected_number_of_purchases_up_to_time(
                    harness.HORIZON_DAYS, f, r, T
                ),
                "expected_order_value": ggf.conditional_expected_average_profit(f, m),
                "clv": ggf.customer_lifetime_value(
                    bgf, f, r, T, m, time=harness.MONTHS, discount_rate=harness.DISCOUNT_MONTHLY, freq="D"
                ),
            }
        except (ConvergenceError, ValueError) as exc:
            result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            outputs = {}
    wall = time.perf_counter() - t0
    peak = harness.peak()
    if outputs:
        pd.DataFrame({k: pd.Series(v).to_numpy(dtype="float64") for k, v in outputs.items()}).to_parquet(
            out / "naive_lifetimes.parquet"
        )
        result["bgnbd"] = {n: float(bgf.params_[n]) for n in BGNBD}
        result["gamma_gamma"] = {n: float(ggf.params_[n]) for n in GG}
        result["bgnbd_mean_nll"] = float(bgf._negative_log_likelihood_)
    counts = Counter(f"{w.category.__name__}: {str(w.message).splitlines()[0][:120]}" for w in caught)
    warned = dict(counts.most_common(5))
    return {"wall_s": round(wall, 3), **peak, "rss_after_read_mb": rss_read, **result, "warnings": warned}


def step(name: str, data: Path, out: Path) -> dict[str, Any]:
    """Run one measured step in this process; return its wall time, this process's peak RSS and its fit."""
    if name == "project":
        return _project(data, out)
    if name == "naive_lifetimes":
        return _naive(data, out)
    raise SystemExit(f"unknown step {name}")


def prepare(n_customers: int, seed: int, d: Path) -> dict[str, Any]:
    """Write the synthetic log, featurise it at ``CUTOFF`` and write the training rows' BTYD summary."""
    import pandas as pd

    from bench.synthetic import generate
    from features.schemas import TRANSACTIONS
    from pipeline import features
    from pipeline.config import CutoffSchedule, FeaturesConfig
    from pipeline.io import write_table

    log = generate(n_customers, seed)
    write_table(log, d / "transactions.parquet", TRANSACTIONS)  # exactly what the ingest stage writes
    n_tx = len(log)
    del log
    parent_after_log = harness.ru_maxrss_mb()
    base = harness.bench_base()
    cfg = FeaturesConfig(
        cutoffs=(dt.date.fromisoformat(CUTOFF),),
        cutoff_schedule=CutoffSchedule(every_days=28, count=0),
        horizon_days=90,
        windows_days=(30, 90, 180, 365),
        trend_window_days=90,
        max_customers_per_training_cutoff=2**62,  # every customer: the snapshot is compared with lifetimes' summary
    )
    features.run(base, cfg, d / "transactions.parquet", d / "features.parquet", d / "features.json")
    summary = pd.read_parquet(d / "features.parquet", columns=SUMMARY_COLUMNS, filters=[("is_scoring", "=", False)])
    summary.to_parquet(d / "summary.parquet", index=False)
    f, m = summary["frequency"], summary["monetary_value"]
    return {
        "n_transactions": n_tx,
        "cutoff": CUTOFF,
        "n_summary_rows": len(summary),
        "n_repeat_buyers": int((f > 0).sum()),
        "n_repeat_spend_le_0": int(((f > 0) & (m <= 0)).sum()),
        "parent_ru_maxrss_mb_after_log": parent_after_log,
        "parent_ru_maxrss_mb_after_features": harness.ru_maxrss_mb(),
    }


def compare(results: dict[str, dict[str, Any]], d: Path) -> dict[str, Any]:
    """Ratios lifetimes / project and how closely the two fits and their outputs agree."""
    import numpy as np
    import pandas as pd

    p, n = results["project"], results["naive_lifetimes"]
    cmp: dict[str, Any] = {
        "wall_ratio_naive_over_project": round(n["wall_s"] / p["wall_s"], 2),
        "peak_rss_ratio_naive_over_project": round(n["peak_rss_mb"] / p["peak_rss_mb"], 2),
    }
    if "error" in n:
        return cmp
    for model, names in (("bgnbd", BGNBD), ("gamma_gamma", GG)):
        abs_diff = {k: abs(p[model][k] - n[model][k]) for k in names}
        cmp[f"{model}_max_abs_param_diff"] = max(abs_diff.values())
        cmp[f"{model}_max_rel_param_diff"] = max(abs_diff[k] / abs(p[model][k]) for k in names)
    cmp["bgnbd_mean_nll_diff"] = p["bgnbd_mean_nll"] - n["bgnbd_mean_nll"]
    po, no = pd.read_parquet(d / "project.parquet"), pd.read_parquet(d / "naive_lifetimes.parquet")
    for col in OUTPUTS:
        cmp[f"{col}_max_abs_diff"] = float(np.max(np.abs(po[col].to_numpy() - no[col].to_numpy())))
    cmp["total_clv_project"] = float(po["clv"].sum())
    cmp["total_clv_naive"] = float(no["clv"].sum())
    cmp["total_clv_rel_diff"] = (cmp["total_clv_naive"] - cmp["total_clv_project"]) / cmp["total_clv_project"]
    return cmp


def show(report: dict[str, Any], out: Path) -> None:
    results, cmp = report["steps"], report.get("comparison", {})
    print(
        f"{report['n_customers']:,} customers, {report['n_transactions']:,} transactions; cutoff {report['cutoff']}: "
        f"{report['n_summary_rows']:,} customers ({report['n_repeat_buyers']:,} repeat buyers), "
        f"{results['project']['n_histories']:,} unique (frequency, recency, T) histories"
    )
    print(f"{'step':<30}{'wall s':>10}{'peak RSS MB':>14}{'RSS at start MB':>18}")
    for name, r in results.items():
        print(f"{STEPS[name]:<30}{r['wall_s']:>10.2f}{r['peak_rss_mb']:>14.0f}{r['rss_after_read_mb']:>18.0f}")
    if cmp:
        print(
            f"{'lifetimes / project':<30}{cmp['wall_ratio_naive_over_project']:>9.2f}x"
            f"{cmp['peak_rss_ratio_naive_over_project']:>13.2f}x"
        )
    naive = results.get("naive_lifetimes", {})
    if "error" in naive:
        print(f"lifetimes failed: {naive['error']}")
    if "bgnbd" in naive:
        print(f"{'parameter':<12}{'project':>16}{'lifetimes':>16}{'abs diff':>12}{'rel diff':>12}")
        for model, names in (("bgnbd", BGNBD), ("gamma_gamma", GG)):
            for k in names:
                a, b = results["project"][model][k], naive[model][k]
                print(f"{model + '.' + k:<12}{a:>16.8g}{b:>16.8g}{abs(a - b):>12.3g}{abs(a - b) / abs(a):>12.3g}")
        print(f"BG/NBD mean neg. log-likelihood, project - lifetimes: {cmp['bgnbd_mean_nll_diff']:.3g}")
        print(
            f"total CLV: project {cmp['total_clv_project']:,.2f}, lifetimes {cmp['total_clv_naive']:,.2f}, "
            f"relative diff {cmp['total_clv_rel_diff']:.3g}"
        )
        diffs = ", ".join(f"{c} {cmp[c + '_max_abs_diff']:.3g}" for c in OUTPUTS)
        print(f"max |project - lifetimes| per customer: {diffs}")
    if naive.get("warnings"):
        print(f"lifetimes warnings: {naive['warnings']}")
    p = results["project"]
    if p["bgnbd_penalizer_coef"] or p["bgnbd_variant"] != "bfgs":
        print(f"project BG/NBD needed penalizer_coef={p['bgnbd_penalizer_coef']}, variant {p['bgnbd_variant']}")
    print(
        "peak RSS: each step's own VmHWM; RSS at start: after imports and reading the summary, before timing. "
        f"(ru_maxrss would show at least the parent's {report['parent_ru_maxrss_mb_after_features']:.0f} MB.)"
    )
    print(f"wrote {out}")


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0], "skip plain lifetimes (slow at large N)")
    if args.step:
        print(json.dumps(step(args.step, args.data, args.out)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-clv-") as tmp:
        d = Path(tmp)
        inputs = prepare(args.customers, args.seed, d)
        names = ["project"] if args.skip_naive else ["project", "naive_lifetimes"]
        results = {name: harness.measure("bench.clv", name, d / "summary.parquet", d) for name in names}
        report: dict[str, Any] = {
            "n_customers": args.customers,
            **inputs,
            "date": dt.date.today().isoformat(),
            "steps": results,
        }
        if not args.skip_naive:
            report["comparison"] = compare(results, d)

    out = Path("reports/bench") / f"clv_{args.customers}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    show(report, out)


if __name__ == "__main__":
    main()
