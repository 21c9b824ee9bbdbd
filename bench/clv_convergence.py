"""Which remedy makes BG/NBD converge: lifetimes' BFGS, the bounded retry, or a penalizer, at every training cutoff.

    python -m bench.clv_convergence --features data/features.parquet [--horizon-days 90]

Run it on a features table built from the log in question; for UCI Online Retail, run the README's override first
(``dvc exp run -S ...``) so data/features.parquet holds its monthly cutoffs. For each cutoff it prints, per
remedy, whether the fit converged, r and a, and the predicted vs actual purchases over the label horizon.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter
from lifetimes.utils import ConvergenceError

REMEDIES: dict[str, tuple[float, dict[str, Any]]] = {
    "bfgs": (0.0, {}),
    "bounded": (0.0, {"bounds": [(-20.0, 20.0)] * 4}),
    "penalizer_0.1": (0.1, {}),
}


def fit(remedy: str, g: pd.DataFrame) -> BetaGeoFitter | None:
    penalizer, extra = REMEDIES[remedy]
    model = BetaGeoFitter(penalizer_coef=penalizer)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            model.fit(g["frequency"], g["recency"], g["T"], weights=g["w"], **extra)
    except ConvergenceError:
        return None
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--horizon-days", type=float, default=90.0, help="the features stage's horizon_days")
    p.add_argument("--days-per-unit", type=float, default=7.0, help="7 for base.time_unit weeks, 1 for days")
    args = p.parse_args()
    table = pd.read_parquet(
        args.features, columns=["cutoff", "is_scoring", "frequency", "recency", "T", "future_purchases"]
    )
    table = table[~table["is_scoring"]]
    horizon = args.horizon_days / args.days_per_unit
    converged = dict.fromkeys(REMEDIES, 0)
    cutoffs = 0
    for cutoff, snap in table.groupby("cutoff"):
        cutoffs += 1
        g = snap.groupby(["frequency", "recency", "T"]).size().rename("w").reset_index()
        cells = [f"{pd.Timestamp(cutoff).date()}  actual {int(snap['future_purchases'].sum()):>6}"]
        for remedy in REMEDIES:
            model = fit(remedy, g)
            if model is None:
                cells.append(f"{remedy}: FAIL")
                continue
            converged[remedy] += 1
            with np.errstate(all="ignore"):
                pred = model.predict(horizon, snap["frequency"], snap["recency"], snap["T"]).sum()
            cells.append(f"{remedy}: r {model.params_['r']:.3f} a {model.params_['a']:.1e} pred {pred:.0f}")
        print(" | ".join(cells), flush=True)
    print("converged: " + ", ".join(f"{k} {v}/{cutoffs}" for k, v in converged.items()))


if __name__ == "__main__":
    main()
