"""Holdout evaluation: value predictions (error, ranking, deciles) and churn probabilities (ranking, calibration).

Pure code. Metric names are snake_case and the same in every run, so ``dvc metrics diff`` and MLflow line up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import average_precision_score, log_loss, precision_recall_curve, roc_auc_score, roc_curve

from models.clv_base import HIGHER_IS_BETTER, LOWER_IS_BETTER

Array = npt.NDArray[np.float64]


def normalized_gini(actual: Array, score: Array) -> float:
    """Gini of ``actual`` ordered by ``score``, divided by the Gini of the best possible order (1 = perfect).

    Customers with tied scores keep their input order (a stable sort), so ties earn no credit from the answer.
    """
    a = np.asarray(actual, dtype=np.float64)
    if a.sum() == 0:
        return float("nan")

    def gini(order: npt.NDArray[np.int64]) -> float:
        sorted_actual = a[order]
        cum = np.cumsum(sorted_actual) / sorted_actual.sum()
        n = len(a)
        return float(cum.sum() / n - (n + 1) / (2 * n))

    return gini(np.argsort(-np.asarray(score), kind="stable")) / gini(np.argsort(-a, kind="stable"))


def top_share(actual: Array, score: Array, share: float = 0.1) -> float:
    """Share of total ``actual`` held by the top ``share`` of customers ranked by ``score``."""
    a = np.asarray(actual, dtype=np.float64)
    total = a.sum()
    if total == 0:
        return float("nan")
    k = max(1, int(np.ceil(share * len(a))))
    top = np.argsort(-np.asarray(score), kind="stable")[:k]
    return float(a[top].sum() / total)


def holdout_metrics(
    purchases_predicted: Array,
    purchases_actual: Array,
    spend_predicted: Array,
    spend_actual: Array,
    value_score: Array,
) -> dict[str, float]:
    """Aggregate and per-customer accuracy of purchases and spend, and how well ``value_score`` ranks spend.

    ``value_score`` is what would be used to rank customers (predicted CLV); it is compared with the realised
    holdout spend by Spearman's rho, the normalized Gini and the spend share captured by its top decile.
    """
    pp, pa = np.asarray(purchases_predicted, float), np.asarray(purchases_actual, float)
    sp, sa = np.asarray(spend_predicted, float), np.asarray(spend_actual, float)
    actual_total = float(pa.sum())
    predicted_total = float(pp.sum())
    pct = 100.0 * (predicted_total - actual_total) / actual_total if actual_total else float("nan")
    from scipy.stats import spearmanr  # here: scipy.stats takes a second to import, and most stages never call this

    rho = spearmanr(value_score, sa).statistic if np.ptp(value_score) > 0 and np.ptp(sa) > 0 else float("nan")
    return {
        "customers": float(len(pa)),
        "purchases_actual": actual_total,
        "purchases_predicted": predicted_total,
        "purchases_pct_error": pct,
        "purchases_abs_pct_error": abs(pct),
        "purchases_mae": float(np.mean(np.abs(pp - pa))),
        "purchases_rmse": float(np.sqrt(np.mean((pp - pa) ** 2))),
        "spend_actual": float(sa.sum()),
        "spend_predicted": float(sp.sum()),
        "spend_mae": float(np.mean(np.abs(sp - sa))),
        "spearman": float(rho),
        "gini": normalized_gini(sa, value_score),
        "top_decile_capture": top_share(sa, value_score, 0.1),
    }


def decile_table(score: Array, predicted: Array, actual: Array) -> pd.DataFrame:
    """Customers split into ten equal groups by ``score`` (decile 1 = highest), with predicted and actual sums."""
    order = np.argsort(-np.asarray(score), kind="stable")
    decile = np.empty(len(order), dtype=np.int64)
    decile[order] = np.arange(len(order)) * 10 // max(len(order), 1) + 1
    frame = pd.DataFrame({"decile": decile, "predicted": predicted, "actual": actual})
    table = frame.groupby("decile", as_index=False).agg(
        customers=("actual", "size"), predicted=("predicted", "sum"), actual=("actual", "sum")
    )
    total = table["actual"].sum()
    table["actual_share"] = table["actual"] / total if total else np.nan
    return table


# --- churn -------------------------------------------------------------------------------------------------------

CHURN_METRICS = (
    "roc_auc",
    "pr_auc",
    "brier",
    "log_loss",
    "ece",
    "top_decile_lift",
    "precision_at_k",
    "recall_at_k",
)


def expected_calibration_error(y: npt.ArrayLike, p: Array, bins: int = 10) -> float:
    """Mean |predicted - observed churn rate| over ``bins`` equal-width probability bins, weighted by their rows."""
    yy, pp = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    idx = np.minimum((pp * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(pp[m].mean() - yy[m].mean())
    return float(total)


def _top(score: Array, k: int) -> npt.NDArray[np.int64]:
    return np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")[:k]


def churn_metrics(y: npt.ArrayLike, score: Array, probability: Array | None, k: int) -> dict[str, float]:
    """How well ``score`` ranks churners and, when given, how honest ``probability`` is, on one labelled cutoff.

    ``score`` orders customers (higher = likelier to churn); ``probability`` is the calibrated churn probability
    behind the Brier score, log loss and ECE (None: those are NaN). ``k`` is the campaign list size: precision and
    recall of the top ``k`` by score. Top-decile lift is the churn rate of the top 10% over the overall rate.
    """
    yy = np.asarray(y, dtype=np.int64)
    sc = np.asarray(score, dtype=np.float64)
    n = len(yy)
    k = max(1, min(int(k), n))
    rate = float(yy.mean())
    decile = _top(sc, max(1, int(np.ceil(0.1 * n))))
    top_k = _top(sc, k)
    out = {
        "roc_auc": float(roc_auc_score(yy, sc)),
        "pr_auc": float(average_precision_score(yy, sc)),
        "top_decile_lift": float(yy[decile].mean() / rate) if rate else float("nan"),
        "precision_at_k": float(yy[top_k].mean()),
        "recall_at_k": float(yy[top_k].sum() / yy.sum()) if yy.sum() else float("nan"),
        "brier": float("nan"),
        "log_loss": float("nan"),
        "ece": float("nan"),
    }
    if probability is not None:
        pp = np.asarray(probability, dtype=np.float64)
        out["brier"] = float(np.mean((pp - yy) ** 2))
        out["log_loss"] = float(log_loss(yy, np.clip(pp, 1e-15, 1 - 1e-15), labels=[0, 1]))
        out["ece"] = expected_calibration_error(yy, pp)
    return out


def thin(frame: pd.DataFrame, points: int = 200) -> pd.DataFrame:
    """At most ``points`` evenly spaced rows of a curve, always keeping the first and last."""
    if len(frame) <= points:
        return frame.reset_index(drop=True)
    idx = np.unique(np.linspace(0, len(frame) - 1, points).round().astype(np.int64))
    return frame.iloc[idx].reset_index(drop=True)


def roc_points(y: npt.ArrayLike, score: Array) -> pd.DataFrame:
    fpr, tpr, _ = roc_curve(np.asarray(y, dtype=np.int64), score)
    return thin(pd.DataFrame({"fpr": fpr, "tpr": tpr}))


def pr_points(y: npt.ArrayLike, score: Array) -> pd.DataFrame:
    precision, recall, _ = precision_recall_curve(np.asarray(y, dtype=np.int64), score)
    return thin(pd.DataFrame({"recall": recall[::-1], "precision": precision[::-1]}))


def calibration_table(y: npt.ArrayLike, p: Array, bins: int = 10) -> pd.DataFrame:
    """Per equal-width probability bin: rows, mean predicted probability and observed churn rate."""
    yy, pp = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    idx = np.minimum((pp * bins).astype(np.int64), bins - 1)
    frame = pd.DataFrame({"bin": idx, "predicted": pp, "observed": yy})
    table = frame.groupby("bin", as_index=False).agg(
        customers=("observed", "size"), predicted=("predicted", "mean"), observed=("observed", "mean")
    )
    table["bin_low"] = table["bin"] / bins
    return table[["bin", "bin_low", "customers", "predicted", "observed"]]


def lift_table(y: npt.ArrayLike, score: Array) -> pd.DataFrame:
    """Customers in ten equal groups by ``score`` (decile 1 = riskiest) with churn rate and lift over the base rate."""
    yy = np.asarray(y, dtype=np.float64)
    order = _top(score, len(yy))
    decile = np.empty(len(order), dtype=np.int64)
    decile[order] = np.arange(len(order)) * 10 // max(len(order), 1) + 1
    table = (
        pd.DataFrame({"decile": decile, "churned": yy})
        .groupby("decile", as_index=False)
        .agg(customers=("churned", "size"), churn_rate=("churned", "mean"))
    )
    rate = float(yy.mean())
    table["lift"] = table["churn_rate"] / rate if rate else np.nan
    return table


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` of ``metric`` is strictly better than ``b`` (NaN is never better)."""
    if np.isnan(a):
        return False
    if np.isnan(b):
        return True
    if metric in LOWER_IS_BETTER:
        return a < b
    if metric in HIGHER_IS_BETTER:
        return a > b
    raise ValueError(f"unknown selection metric {metric!r}; use one of {LOWER_IS_BETTER + HIGHER_IS_BETTER}")


def round_metrics(metrics: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """Floats rounded for stable JSON; NaN becomes None (JSON has no NaN)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out[k] = round_metrics(v, digits)
        elif isinstance(v, float):
            out[k] = None if not np.isfinite(v) else round(v, digits)
        else:
            out[k] = v
    return out
