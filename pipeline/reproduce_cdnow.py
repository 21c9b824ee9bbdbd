"""Reproduce Fader, Hardie & Lee (2005) on the raw CDNOW sample with the pipeline's own ingest, features and CLV code.

Not a DVC stage: a check that the models are right. It uses the papers' setup, whatever params.yaml says:
the 2,357-customer CDNOW_sample log, calibration to 1997-09-30, time in weeks, a 39-week holdout to 1998-06-30,
no penalizer. It prints fitted next to published values, writes them as JSON, and exits 1 if any fitted value
differs from the published one at the published number of decimals.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import schemas as s
from models.purchases import PurchaseModel
from models.spend import SpendModel
from pipeline import cli, features, ingest
from pipeline.config import BaseConfig, CutoffSchedule, FeaturesConfig, IngestConfig, load_params, section
from pipeline.io import read_table, write_json

log = logging.getLogger("reproduce_cdnow")

CALIBRATION_END = dt.date(1997, 9, 30)
HOLDOUT_DAYS = 273  # 39 weeks: 1997-10-01 .. 1998-06-30

# Fader, Hardie & Lee (2005a), Marketing Science 24(2), BG/NBD on CDNOW; Fader, Hardie & Lee (2005b), JMR 42(4),
# Gamma-Gamma on the same customers (the paper calls v gamma). Holdout repeat purchases: 1,882 actual, and the
# BG/NBD conditional expectation over the 39 weeks summed over customers, 1,653.
PUBLISHED: dict[str, dict[str, float]] = {
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "gamma_gamma": {"p": 6.25, "q": 3.74, "v": 15.44},
    "holdout": {"actual": 1882, "predicted": 1653},
}
LOG_LIKELIHOOD_PUBLISHED = -9582.4


def _decimals(value: float) -> int:
    text = repr(float(value))
    return 0 if text.endswith(".0") else len(text.split(".")[1])


def calibration_snapshot(params: dict[str, Any], workdir: Path) -> pd.DataFrame:
    """The CDNOW_sample customers at the calibration end, with their 39-week holdout labels, via ingest + features."""
    base = dataclasses.replace(section(params, "base", BaseConfig), time_unit="weeks")
    ingest_cfg = dataclasses.replace(section(params, "ingest", IngestConfig), source="cdnow_sample")
    feat_cfg = dataclasses.replace(
        section(params, "features", FeaturesConfig),
        cutoffs=(CALIBRATION_END,),
        cutoff_schedule=CutoffSchedule(every_days=28, count=0),
        horizon_days=HOLDOUT_DAYS,
    )
    tx = workdir / "transactions.parquet"
    feats = workdir / "features.parquet"
    ingest.run(base, ingest_cfg, tx, workdir / "quarantine.parquet", workdir / "ingest.json")
    features.run(base, feat_cfg, tx, feats, workdir / "features.json")
    schema = s.feature_schema(feat_cfg.windows_days, feat_cfg.trend_window_days)
    return read_table(feats, schema, filters=[(s.CUTOFF, "=", pd.Timestamp(CALIBRATION_END))])


def reproduce(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Ingest CDNOW_sample, featurise at the calibration end with a 39-week horizon, fit, and predict the holdout."""
    cal = calibration_snapshot(params, workdir)
    f = cal[s.FREQUENCY].to_numpy(np.float64)
    r = cal[s.RECENCY].to_numpy(np.float64)
    t = cal[s.T].to_numpy(np.float64)
    m = cal[s.MONETARY_VALUE].to_numpy(np.float64)
    purchases = PurchaseModel("bgnbd", (0.0,)).fit(f, r, t)
    repeat = f > 0
    spend = SpendModel((0.0,)).fit(f[repeat], m[repeat])
    predicted = purchases.expected_purchases(HOLDOUT_DAYS / 7, f, r, t).sum()
    report = purchases.report()
    return {
        "bgnbd": report.params,
        "gamma_gamma": spend.params_,
        "holdout": {"actual": int(cal[s.FUTURE_PURCHASES].sum()), "predicted": float(predicted)},
        "published": PUBLISHED,
        "log_likelihood": {"fitted": report.log_likelihood, "published": LOG_LIKELIHOOD_PUBLISHED},
        "standard_errors": {"bgnbd": report.standard_errors, "gamma_gamma": spend.report().standard_errors},
        "setup": {
            "customers": len(cal),
            "repeat_buyers": int(repeat.sum()),
            "unique_histories": report.n_histories,
            "calibration_end": str(CALIBRATION_END),
            "holdout_end": str(CALIBRATION_END + dt.timedelta(days=HOLDOUT_DAYS)),
            "time_unit": "weeks",
        },
    }


def compare(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Printable rows (block, name, fitted, published) and the names that differ at the published decimals."""
    rows, mismatches = [], []
    for block, values in PUBLISHED.items():
        for name, published in values.items():
            fitted = result[block][name]
            digits = _decimals(published)
            same = round(fitted, digits) == round(published, digits)
            if not same:
                mismatches.append(f"{block}.{name}")
            rows.append(
                f"{block:<12} {name:<10} {fitted:>12.{max(digits, 3)}f} {published:>12}  {'ok' if same else 'DIFF'}"
            )
    return rows, mismatches


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="where to write the JSON report")
    args = p.parse_args(argv)
    params = load_params(args.params)
    with tempfile.TemporaryDirectory(prefix="cdnow_") as tmp:
        result = reproduce(params, Path(tmp))
    rows, mismatches = compare(result)
    write_json(result, args.out)
    print(f"{'block':<12} {'parameter':<10} {'fitted':>12} {'published':>12}")
    print("\n".join(rows))
    ll = result["log_likelihood"]
    print(f"{'bgnbd':<12} {'log-lik':<10} {ll['fitted']:>12.1f} {ll['published']:>12}")
    print(f"wrote {args.out}")
    if mismatches:
        print(f"error: fitted values differ from the published ones: {', '.join(mismatches)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
