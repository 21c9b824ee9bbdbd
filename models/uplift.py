"""Uplift: whose retention the contact changes, learnt from the campaign's own randomised arms.

A two-model ("T-learner") estimate: one LightGBM classifier of retention on the target arm, one on the control
arm, each on the scores the customer had when assigned; a customer's uplift is the difference of the two
predicted retention probabilities (Kuenzel et al. 2019 call this the T-learner). The arms are random, so each
model sees a fair sample of the customers; nothing here needs the propensity a non-randomised design would.

scikit-uplift (0.5.1, the last release, 2022) has these pieces, but it calls a scikit-learn helper that
scikit-learn deprecates in 1.8 and removes in 1.10, and our bootstrap needs the Qini coefficient thousands of
times on resampled rows; so the coefficient is written here, vectorised, and checked against a hand count.

Qini (Radcliffe 2007): customers ranked by a score, ``Q(k) = R_t(k) - R_c(k) x N_t(k) / N_c(k)`` is the
incremental number retained among the first ``k``, ``R`` retained counts and ``N`` arm sizes among them. The
coefficient is the area between that curve and the straight line from (0, 0) to (n, Q(n)) (what a random order
gives), divided by ``n``: the incremental retentions per customer that the ranking's order adds over chance. It
is comparable between two rankings on the same rows, which is all the gate needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

FEATURES = (
    "p_churn",
    "clv",
    "p_alive",
    "days_since_last_purchase",
    "purchase_days",
    "total_spend",
    "revenue_last_horizon",
)


def qini_coefficient(retained: np.ndarray, is_target: np.ndarray, score: np.ndarray) -> float:
    """The Qini coefficient of ranking by ``score`` (highest first); see the module's docstring."""
    return float(qini_many(np.asarray(retained), np.asarray(is_target), np.asarray(score), None)[0])


def qini_many(
    retained: np.ndarray, is_target: np.ndarray, score: np.ndarray, resamples: np.ndarray | None
) -> np.ndarray:
    """The Qini coefficient on each row set of ``resamples`` (an int array, one resample of row indices per row;
    ``None``: the rows as given). Ties in ``score`` are broken by row position, the same for every ranking."""
    order = np.lexsort((np.arange(len(score)), -np.asarray(score, dtype=np.float64)))
    y = np.asarray(retained, dtype=np.float64)[order]
    t = np.asarray(is_target, dtype=bool)[order]
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    idx = np.arange(len(order))[None, :] if resamples is None else np.sort(rank_of[resamples], axis=1)
    yt = np.cumsum(y[idx] * t[idx], axis=1)
    yc = np.cumsum(y[idx] * ~t[idx], axis=1)
    nt = np.cumsum(t[idx], axis=1)
    nc = np.cumsum(~t[idx], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(nc > 0, yt - yc * nt / np.maximum(nc, 1), yt)
    n = idx.shape[1]
    area = q.sum(axis=1) - q[:, -1] * (n + 1) / 2  # the curve's area above the random line, step by step
    return area / n / n


@dataclasses.dataclass
class TwoModelUplift:
    """Retention on each arm by LightGBM; ``predict`` returns target minus control probability."""

    learning_rate: float = 0.05
    num_leaves: int = 7
    min_child_samples: int = 300  # an uplift is a small difference of two noisy fits: large leaves, few rounds
    rounds: int = 100
    seed: int = 0
    threads: int = 2
    features: Sequence[str] = FEATURES
    models_: dict[str, lgb.Booster] = dataclasses.field(default_factory=dict)

    def _params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "lambda_l2": 1.0,
            "seed": self.seed,
            "deterministic": True,
            "num_threads": self.threads,
            "verbose": -1,
        }

    def fit(self, frame: pd.DataFrame, retained: np.ndarray, is_target: np.ndarray) -> TwoModelUplift:
        t = np.asarray(is_target, dtype=bool)
        y = np.asarray(retained, dtype=np.float64)
        x = frame[list(self.features)].to_numpy(np.float64)
        for arm, rows in (("target", t), ("control", ~t)):
            if rows.sum() < 2 * self.min_child_samples or len(np.unique(y[rows])) < 2:
                raise ValueError(
                    f"uplift: the {arm} arm has {int(rows.sum())} customers with outcomes, or one outcome only; "
                    f"at least {2 * self.min_child_samples} with both outcomes are needed"
                )
            data = lgb.Dataset(x[rows], label=y[rows], free_raw_data=True)
            self.models_[arm] = lgb.train(self._params(), data, num_boost_round=self.rounds)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if not self.models_:
            raise RuntimeError("TwoModelUplift: call fit before predict")
        x = frame[list(self.features)].to_numpy(np.float64)
        target = np.asarray(self.models_["target"].predict(x), dtype=np.float64)
        return target - np.asarray(self.models_["control"].predict(x), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), **{arm: m.model_to_string() for arm, m in self.models_.items()}}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TwoModelUplift:
        model = cls(features=tuple(doc["features"]))
        model.models_ = {arm: lgb.Booster(model_str=doc[arm]) for arm in ("target", "control")}
        return model


def paired_qini_gain(
    retained: np.ndarray,
    is_target: np.ndarray,
    challenger: np.ndarray,
    incumbent: np.ndarray,
    *,
    level: float,
    resamples: int,
    seed: int,
) -> dict[str, float]:
    """Qini of ranking by ``challenger`` minus that of ``incumbent`` on the same rows, with a paired percentile
    bootstrap interval over customers (both rankings scored on every resample's rows)."""
    rng = np.random.default_rng(seed)
    n = len(retained)
    gains = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # resamples at a time: a few arrays of chunk x n floats in memory
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        a = qini_many(retained, is_target, challenger, draws)
        b = qini_many(retained, is_target, incumbent, draws)
        gains[start : start + len(draws)] = a - b
    tail = (1 - level) / 2
    return {
        "challenger": qini_coefficient(retained, is_target, challenger),
        "incumbent": qini_coefficient(retained, is_target, incumbent),
        "gain": qini_coefficient(retained, is_target, challenger) - qini_coefficient(retained, is_target, incumbent),
        "low": float(np.quantile(gains, tail)),
        "high": float(np.quantile(gains, 1 - tail)),
    }
