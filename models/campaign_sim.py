"""A campaign with a known truth, for the tests, the benchmark and the demo.

The simulated contact saves a customer who would otherwise have bought nothing in the horizon with probability
``tau``; a customer who would have bought anyway gains nothing. ``tau`` varies by customer:

* ``heterogeneous``: ``max_effect x max(0, 1 - |p_churn - 0.5| / 0.3)``, nothing for the sure stayers
  (p_churn <= 0.2) and the lost causes (>= 0.8), most for the persuadable middle;
* ``homogeneous``: ``max_effect`` for everyone: the gain is then ``max_effect x P(churn)``, which the risk
  ranking already orders best.

Potential outcomes: ``retained_1 = retained_0 or saved`` with ``saved ~ Bernoulli(tau)`` drawn for every customer
and applied to the target arm only. The true lift of a group is the mean of ``tau x (1 - retained_0)`` over all
its assigned customers (both arms): what the intention-to-treat difference estimates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from features import schemas as s

Shape = Literal["heterogeneous", "homogeneous"]


def true_effect(p_churn: np.ndarray, shape: Shape, max_effect: float) -> np.ndarray:
    """Each customer's probability that a contact saves them, if they would otherwise churn."""
    p = np.asarray(p_churn, dtype=np.float64)
    if shape == "homogeneous":
        return np.full(len(p), max_effect)
    if shape == "heterogeneous":
        return max_effect * np.clip(1 - np.abs(p - 0.5) / 0.3, 0.0, 1.0)
    raise ValueError(f"true_effect: shape must be heterogeneous or homogeneous, got {shape!r}")


def saved(tau: np.ndarray, retained_0: np.ndarray, is_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which target customers the contact saves (they would have churned, and the draw fell under ``tau``)."""
    draw = rng.random(len(tau))
    return np.asarray(is_target, bool) & ~np.asarray(retained_0, bool) & (draw < np.asarray(tau))


def true_lift(tau: np.ndarray, retained_0: np.ndarray) -> float:
    """The expected intention-to-treat lift of a group: the mean of ``tau x (1 - retained_0)``."""
    return float(np.mean(np.asarray(tau) * ~np.asarray(retained_0, bool))) if len(tau) else float("nan")


def synthetic_scores(n: int, rng: np.random.Generator, *, as_of: str, segments: int = 4) -> pd.DataFrame:
    """A week's scored customers: p_churn ~ Beta(2, 2), CLV ~ Gamma(2, 40), behaviour columns consistent with them,
    and ``segments`` segments by p_churn band, each with its own action."""
    p = rng.beta(2.0, 2.0, n)
    clv = rng.gamma(2.0, 40.0, n)
    band = np.minimum((p * segments).astype(int), segments - 1)
    names = np.array([f"band {i + 1}" for i in range(segments)], dtype=object)
    days = rng.integers(1, 400, n)
    return pd.DataFrame(
        {
            s.CUSTOMER_ID: [f"c{i:07d}" for i in range(n)],
            s.AS_OF: pd.Timestamp(as_of),
            s.SEGMENT: names[band],
            s.RECOMMENDED_ACTION: names[band],
            s.P_CHURN: p,
            s.CLV: clv,
            s.P_ALIVE: 1 - p,
            s.VALUE_AT_RISK: p * clv,
            s.DAYS_SINCE_LAST_PURCHASE: days,
            s.PURCHASE_DAYS: rng.integers(1, 20, n),
            s.TOTAL_SPEND: clv * rng.uniform(0.5, 3.0, n),
            s.REVENUE_LAST_HORIZON: np.where(days < 90, clv * 0.3, 0.0),
        }
    )


def baseline_outcomes(scores: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Untreated outcomes: retained with probability ``1 - p_churn`` (the scores are calibrated), and a revenue
    of about a quarter of the CLV for those retained."""
    p = scores[s.P_CHURN].to_numpy(np.float64)
    retained = rng.random(len(p)) >= p
    revenue = np.where(retained, scores[s.CLV].to_numpy(np.float64) * rng.uniform(0.1, 0.4, len(p)), 0.0)
    return retained, revenue
