"""Benchmark of churn training (models.churn.ChurnModel) on ~1M labelled rows, against scikit-learn's histogram GBM.

Run from the repository root: ``python -m bench.churn --customers 100000`` (``--skip-naive`` skips scikit-learn).

Not timed, done once: the synthetic log (bench.synthetic) for ``--customers`` customers is featurised by the
features stage at 13 cutoffs every 28 days, and the churn stage's table is built from it (population, split in
time, derived features; no per-cutoff BTYD fits, which the clv benchmark measures). The training and validation
rows are written to Parquet. Each measured step runs in its own process and reads them; wall time is measured
after reading, peak RSS is the step's VmHWM. The steps:

- ``project``: ``ChurnModel.fit`` (LightGBM, early stopping on the validation cutoff, cross-fitted calibration)
  with the project's params.yaml settings, then calibrated predictions and TreeSHAP contributions for the
  validation rows;
- ``sklearn_hgb``: ``HistGradientBoostingClassifier`` on the same training rows with the same learning rate,
  leaves, minimum leaf size and L2, grown to the number of trees LightGBM's early stopping chose (scikit-learn
  cannot early-stop on a given validation set), then predictions; no calibration, no contributions.

Prints a table (rows, wall s, peak RSS MB, validation ROC-AUC, ratios) and writes ``reports/bench/churn_<N>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness

STEPS = {"project": "project ChurnModel (LightGBM)", "sklearn_hgb": "scikit-learn HistGradientBoosting"}


def _frames(data: Path) -> tuple[Any, Any, Any, Any]:
    import pandas as pd

    train = pd.read_parquet(data / "train.parquet")
    valid = pd.read_parquet(data / "valid.parquet")
    return train.drop(columns="y"), train["y"].to_numpy(), valid.drop(columns="y"), valid["y"].to_numpy()


def _settings() -> Any:
    from models import churn as cm
    from pipeline.config import ChurnConfig, load_params, section

    cfg = section(load_params("params.yaml"), "churn", ChurnConfig)
    fields = {f.name: getattr(cfg.lightgbm, f.name) for f in dataclasses.fields(cfg.lightgbm)}
    return cm.BoosterSettings(**fields, seed=42)


def step(name: str, data: Path, out: Path) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    X_tr, y_tr, X_va, y_va = _frames(data)
    settings = _settings()
    rss_read = harness.status_mb("VmRSS")
    t0 = time.perf_counter()
    if name == "project":
        from models import churn as cm

        model = cm.ChurnModel(settings, "auto").fit(X_tr, y_tr, X_va, y_va)
        fit_s = time.perf_counter() - t0
        p = model.predict_proba(X_va)
        t1 = time.perf_counter()
        model.contributions(X_va)
        extra = {"fit_s": round(fit_s, 2), "contributions_s": round(time.perf_counter() - t1, 2)}
        rounds = model.best_iteration_
        (out / "rounds.txt").write_text(str(rounds))
    else:
        from sklearn.ensemble import HistGradientBoostingClassifier

        rounds = int((out / "rounds.txt").read_text())
        hgb = HistGradientBoostingClassifier(
            learning_rate=settings.learning_rate,
            max_leaf_nodes=settings.num_leaves,
            min_samples_leaf=settings.min_child_samples,
            l2_regularization=settings.lambda_l2,
            max_iter=rounds,
            early_stopping=False,
            random_state=42,
        )
        hgb.fit(X_tr, y_tr)
        p = hgb.predict_proba(X_va)[:, 1]
        extra = {}
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        **harness.peak(),
        "rss_after_read_mb": rss_read,
        "rounds": rounds,
        "valid_roc_auc": round(float(roc_auc_score(y_va, p)), 4),
        **extra,
    }


def prepare(n_customers: int, seed: int, d: Path) -> dict[str, Any]:
    """Synthetic log -> features at 13 cutoffs -> the churn table's training and validation rows."""
    import numpy as np

    from bench.features import _features_config
    from bench.synthetic import generate
    from features import schemas as s
    from features.schemas import TRANSACTIONS
    from models import churn as cm
    from pipeline import features
    from pipeline.churn import read_features
    from pipeline.io import write_table

    log = generate(n_customers, seed)
    write_table(log, d / "transactions.parquet", TRANSACTIONS)
    n_tx = len(log)
    del log
    base = harness.bench_base()
    fcfg = _features_config(13)
    features.run(base, fcfg, d / "transactions.parquet", d / "features.parquet", d / "features.json")
    frame = read_features(d / "features.parquet", fcfg)
    frame = frame[~frame[s.IS_SCORING]]
    split = cm.split_cutoffs(sorted(frame[s.CUTOFF].unique()), fcfg.horizon_days)
    frame = frame[frame[s.CUTOFF].isin([*split.training, split.validation])]
    table = cm.add_derived(frame[cm.in_population(frame, 730)])
    X = cm.feature_columns(table)
    y = table[s.CHURNED].astype(bool).to_numpy(np.int64)
    is_valid = (table[s.CUTOFF] == split.validation).to_numpy()
    table[X][~is_valid].assign(y=y[~is_valid]).to_parquet(d / "train.parquet", index=False)
    table[X][is_valid].assign(y=y[is_valid]).to_parquet(d / "valid.parquet", index=False)
    return {
        "n_transactions": n_tx,
        "n_train_rows": int((~is_valid).sum()),
        "n_valid_rows": int(is_valid.sum()),
        "n_features": len(X),
        "training_cutoffs": len(split.training),
        "positive_rate_valid": round(float(y[is_valid].mean()), 4),
    }


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0], "skip scikit-learn's HistGradientBoostingClassifier")
    if args.step:
        print(json.dumps(step(args.step, args.data, args.out)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_churn_") as tmp:
        d = Path(tmp)
        info = prepare(args.customers, args.seed, d)
        names = ["project"] if args.skip_naive else list(STEPS)
        results = {n: harness.measure("bench.churn", n, d, d) for n in names}
    report: dict[str, Any] = {"customers": args.customers, **info, "steps": results}
    if "sklearn_hgb" in results:
        p, n = results["project"], results["sklearn_hgb"]
        report["wall_ratio_sklearn_over_project"] = round(n["wall_s"] / p["wall_s"], 2)
        report["peak_rss_ratio_sklearn_over_project"] = round(n["peak_rss_mb"] / p["peak_rss_mb"], 2)
    out = Path("reports/bench") / f"churn_{args.customers}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    rows = f"{info['n_train_rows']:,} training + {info['n_valid_rows']:,} validation rows"
    print(f"{rows}, {info['n_features']} features")
    print(f"{'step':38s} {'wall s':>8s} {'peak MB':>8s} {'rounds':>7s} {'ROC-AUC':>8s}")
    for n, r in results.items():
        print(f"{STEPS[n]:38s} {r['wall_s']:8.2f} {r['peak_rss_mb']:8.0f} {r['rounds']:7d} {r['valid_roc_auc']:8.4f}")
    fit = results["project"]
    print(f"project: fit (trees to early stop + calibration) {fit['fit_s']} s, TreeSHAP {fit['contributions_s']} s")
    if "wall_ratio_sklearn_over_project" in report:
        print(
            f"ratios scikit-learn / project: wall {report['wall_ratio_sklearn_over_project']}x, "
            f"peak memory {report['peak_rss_ratio_sklearn_over_project']}x"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
