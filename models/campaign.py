"""The campaign loop's pure parts: who is held out, who is worth a contact, and what the contact changed.

*Assignment.* Each week's eligible customers are split into a **target** arm (contacted) and a **control** arm
(held out), stratified by segment. A customer's draw is a keyed hash of (seed, week, customer id) mapped to
[0, 1): the same week re-run gives the same draw, and nothing about one week's draw tells the next. Within a
segment the ``k`` lowest draws are the control, ``k = max(ceil(share x n), min(min_per_segment, n // 2))``
(at most ``n - 1``): the share everywhere, and at least ``min_per_segment`` held out where the segment can
spare them (a segment of one customer is all target; one of 40 with a minimum of 30 holds out 20).

*Economics.* Contacting customer ``i`` with action ``a`` is worth, in expectation,

    net_value_i = min(effect_a, p_churn_i) x clv_i - cost_a

``effect_a`` is the action's reduction in the probability of churning (percentage points as a share: 0.05 turns
a p_churn of 0.60 into 0.55), capped at the customer's own ``p_churn``; ``clv_i`` is the customer's profit over
the CLV horizon (margin already applied), the value a retained customer keeps. A customer is worth a contact
only where ``net_value_i > 0``; with a budget, the best first until the expected spend on the target arm
(``cost x (1 - control_share)`` each, since the control is not contacted) reaches it.

*Measurement*, intention to treat (every assigned customer counts in the arm drawn for them, reached or not):
retention is any purchase in the horizon after the scoring date; its difference between the arms carries
Newcombe's hybrid score interval (Newcombe 1998, method 10, via statsmodels), revenue per customer Welch's
interval. Pooled over strata (weeks x segments) the stratum differences are weighted by stratum size, with the
variance of that weighted sum (normal interval): a plain pooled difference would be biased where strata hold out
different shares. The minimum detectable effect at the groups' sizes is

    mde = (z_(1 - alpha/2) + z_power) x sqrt(p_c (1 - p_c) (1/n_t + 1/n_c))

(the normal approximation for two proportions, e.g. Chow, Shao & Wang 2008, sec. 4.2), with ``p_c`` the control
arm's retention: a difference smaller than it is not evidence of anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep

from features import schemas as s

TARGET = s.TARGET_ARM
CONTROL = s.CONTROL_ARM

_DRAW_BITS = 53  # a float64 holds 53 bits exactly: the draw is a multiple of 2**-53 in [0, 1)


def arm_draw(customer_ids: Sequence[str] | pd.Series, week: str, seed: int) -> np.ndarray:
    """Each customer's draw in [0, 1), a BLAKE2b hash of (seed, week, id): the same on any machine and release."""
    key = f"{seed}|{week}".encode()
    out = np.empty(len(customer_ids), dtype=np.float64)
    scale = 2.0**-_DRAW_BITS
    for i, cid in enumerate(customer_ids):
        digest = hashlib.blake2b(str(cid).encode(), digest_size=8, key=key).digest()
        out[i] = (int.from_bytes(digest, "big") >> (64 - _DRAW_BITS)) * scale
    return out


def control_size(n: int, share: float, min_per_segment: int) -> int:
    """How many of a segment's ``n`` customers are held out (see the module's docstring)."""
    if n <= 1:
        return 0  # one customer compares with nobody: contacted
    return min(n - 1, max(math.ceil(share * n), min(min_per_segment, n // 2)))


def assign_arms(
    customer_ids: pd.Series, strata: pd.Series, *, week: str, seed: int, share: float, min_per_segment: int
) -> np.ndarray:
    """The arm (``target`` | ``control``) of each customer: the lowest draws of each stratum are the control."""
    if len(customer_ids) != len(strata):
        raise ValueError(f"assign_arms: {len(customer_ids)} customers but {len(strata)} strata")
    if customer_ids.duplicated().any():
        raise ValueError(f"assign_arms: {int(customer_ids.duplicated().sum())} duplicate customer id(s) in one week")
    frame = pd.DataFrame(
        {
            "id": customer_ids.astype(str).to_numpy(),
            "stratum": strata.astype(str).to_numpy(),
            "u": arm_draw(customer_ids.astype(str).tolist(), week, seed),
        }
    )
    # rank within the stratum by draw, ties (a 2**-53 coincidence) by id, so the order never depends on row order
    order = frame.sort_values(["stratum", "u", "id"], kind="mergesort")
    position = order.groupby("stratum", sort=False).cumcount().to_numpy()
    sizes = order.groupby("stratum", sort=False)["id"].transform("size").to_numpy()
    k = np.array([control_size(int(n), share, min_per_segment) for n in sizes])
    arm = np.where(position < k, CONTROL, TARGET)
    out = np.empty(len(frame), dtype=object)
    out[order.index.to_numpy()] = arm
    return out


def net_value(p_churn: np.ndarray, clv: np.ndarray, effect: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The expected net value of one contact: ``min(effect, p_churn) x clv - cost`` (see the module's docstring)."""
    p = np.asarray(p_churn, dtype=np.float64)
    saved = np.minimum(np.asarray(effect, dtype=np.float64), p)
    return saved * np.asarray(clv, dtype=np.float64) - np.asarray(cost, dtype=np.float64)


def within_budget(value: np.ndarray, cost: np.ndarray, *, budget: float | None, control_share: float) -> np.ndarray:
    """Which customers are worth a contact: positive ``value``, and the best first while the target arm's expected
    spend stays within ``budget`` (``None``: no cap). A boolean mask in the input's order."""
    v = np.asarray(value, dtype=np.float64)
    keep = v > 0
    if budget is None:
        return keep
    order = np.argsort(-v, kind="mergesort")
    spend = np.cumsum(np.asarray(cost, dtype=np.float64)[order] * (1.0 - control_share))
    fits = np.zeros(len(v), dtype=bool)
    fits[order] = spend <= budget + 1e-9
    return keep & fits


# --- measurement -------------------------------------------------------------------------------------------------


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def mde(p_control: float, n_target: int, n_control: int, *, level: float, power: float) -> float | None:
    """The smallest retention difference the arms' sizes detect with ``power`` at ``1 - level`` (two-sided)."""
    if n_target < 1 or n_control < 1:
        return None
    p = min(max(p_control, 1.0 / (2 * n_control)), 1 - 1.0 / (2 * n_control))  # a rate of 0 or 1 still has noise
    return (_z(level) + float(stats.norm.ppf(power))) * math.sqrt(p * (1 - p) * (1 / n_target + 1 / n_control))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Target against control on one group of assigned customers (a segment in a week, or pooled)."""

    n_target: int
    n_control: int
    retention_target: float | None
    retention_control: float | None
    lift: float | None  # retention of the target minus the control's
    lift_low: float | None
    lift_high: float | None
    mde: float | None
    revenue_target: float | None  # mean revenue per customer in the horizon
    revenue_control: float | None
    revenue_lift: float | None
    revenue_low: float | None
    revenue_high: float | None
    incremental_revenue: float | None  # revenue_lift x n_target: what the contacts added
    incremental_profit: float | None  # x margin
    contact_cost: float | None  # of the target arm

    @property
    def significant(self) -> bool:
        return self.lift_low is not None and self.lift_high is not None and (self.lift_low > 0 or self.lift_high < 0)

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {**dataclasses.asdict(self), "significant": self.significant}


def _without_difference(
    n_t: int, n_c: int, rate_t: float | None, rate_c: float | None, cost: float | None
) -> Comparison:
    """A group without both arms: sizes and rates, no difference."""
    blank = dict.fromkeys(
        ("lift", "lift_low", "lift_high", "mde", "revenue_target", "revenue_control", "revenue_lift"),
    )
    more = dict.fromkeys(("revenue_low", "revenue_high", "incremental_revenue", "incremental_profit"))
    return Comparison(n_t, n_c, rate_t, rate_c, **blank, **more, contact_cost=cost)


def compare_arms(
    retained: np.ndarray,
    revenue: np.ndarray,
    is_target: np.ndarray,
    *,
    margin_ratio: float,
    level: float,
    power: float,
    cost: np.ndarray | None = None,
) -> Comparison:
    """Retention and revenue of the target arm against the control's, with intervals at ``level``."""
    t = np.asarray(is_target, dtype=bool)
    y = np.asarray(retained, dtype=bool)
    r = np.asarray(revenue, dtype=np.float64)
    n_t, n_c = int(t.sum()), int((~t).sum())
    spent = float(np.asarray(cost, dtype=np.float64)[t].sum()) if cost is not None else None
    if n_t == 0 or n_c == 0:
        rate = float(y[t].mean()) if n_t else (float(y[~t].mean()) if n_c else None)
        return _without_difference(n_t, n_c, rate if n_t else None, rate if n_c else None, spent)
    k_t, k_c = int(y[t].sum()), int(y[~t].sum())
    p_t, p_c = k_t / n_t, k_c / n_c
    low, high = confint_proportions_2indep(k_t, n_t, k_c, n_c, method="newcomb", compare="diff", alpha=1 - level)
    rev_t, rev_c = float(r[t].mean()), float(r[~t].mean())
    rev_low = rev_high = None
    if n_t >= 2 and n_c >= 2 and (r[t].std() > 0 or r[~t].std() > 0):
        with warnings.catch_warnings():  # one arm without spread: Welch's degrees of freedom still exist
            warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
            # revenues all but equal in an arm (everyone bought the same): the interval is still the right one
            warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
            ci = stats.ttest_ind(r[t], r[~t], equal_var=False).confidence_interval(confidence_level=level)
        rev_low, rev_high = float(ci.low), float(ci.high)
    diff = rev_t - rev_c
    return Comparison(
        n_target=n_t,
        n_control=n_c,
        retention_target=p_t,
        retention_control=p_c,
        lift=p_t - p_c,
        lift_low=float(low),
        lift_high=float(high),
        mde=mde(p_c, n_t, n_c, level=level, power=power),
        revenue_target=rev_t,
        revenue_control=rev_c,
        revenue_lift=diff,
        revenue_low=rev_low,
        revenue_high=rev_high,
        incremental_revenue=diff * n_t,
        incremental_profit=diff * n_t * margin_ratio,
        contact_cost=spent,
    )


def pool(
    strata: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    margin_ratio: float,
    level: float,
    power: float,
    costs: Sequence[np.ndarray] | None = None,
) -> Comparison:
    """The strata's (retained, revenue, is_target) pooled: each stratum's difference weighted by its size.

    A stratum without both arms has no difference and is left out of the lift (its customers still count in
    ``n_target`` / ``n_control``). The interval is normal on the weighted sum's variance (module docstring)."""
    z = _z(level)
    n_t = n_c = 0
    spent = 0.0
    parts = []
    for i, (retained, revenue, is_target) in enumerate(strata):
        t = np.asarray(is_target, dtype=bool)
        y = np.asarray(retained, dtype=np.float64)
        r = np.asarray(revenue, dtype=np.float64)
        nt, nc = int(t.sum()), int((~t).sum())
        n_t, n_c = n_t + nt, n_c + nc
        if costs is not None:
            spent += float(np.asarray(costs[i], dtype=np.float64)[t].sum())
        if nt == 0 or nc == 0:
            continue
        pt, pc = y[t].mean(), y[~t].mean()
        var_r = (r[t].var(ddof=1) if nt > 1 else 0.0) / nt + (r[~t].var(ddof=1) if nc > 1 else 0.0) / nc
        parts.append((nt + nc, nt, pt, pc, pt * (1 - pt) / nt + pc * (1 - pc) / nc, r[t].mean(), r[~t].mean(), var_r))
    cost_total = spent if costs is not None else None
    if not parts:
        return _without_difference(n_t, n_c, None, None, cost_total)
    a = np.array(parts, dtype=np.float64)
    w = a[:, 0] / a[:, 0].sum()
    p_t, p_c = float(w @ a[:, 2]), float(w @ a[:, 3])
    lift, se = p_t - p_c, float(math.sqrt(w**2 @ a[:, 4]))
    rev_t, rev_c = float(w @ a[:, 5]), float(w @ a[:, 6])
    rev, se_r = rev_t - rev_c, float(math.sqrt(w**2 @ a[:, 7]))
    n_meas_t, n_meas_c = int(a[:, 1].sum()), int((a[:, 0] - a[:, 1]).sum())
    # the MDE of the pooled design: the weighted sum's standard error under no effect, at the control's rate
    se0 = float(math.sqrt(w**2 @ (p_c * (1 - p_c) * (1 / a[:, 1] + 1 / (a[:, 0] - a[:, 1])))))
    return Comparison(
        n_target=n_t,
        n_control=n_c,
        retention_target=p_t,
        retention_control=p_c,
        lift=lift,
        lift_low=lift - z * se,
        lift_high=lift + z * se,
        mde=(z + float(stats.norm.ppf(power))) * se0 if n_meas_t and n_meas_c else None,
        revenue_target=rev_t,
        revenue_control=rev_c,
        revenue_lift=rev,
        revenue_low=rev - z * se_r,
        revenue_high=rev + z * se_r,
        incremental_revenue=rev * n_meas_t,
        incremental_profit=rev * n_meas_t * margin_ratio,
        contact_cost=cost_total,
    )


def measured_effect(result: Mapping[str, object]) -> float | None:
    """The measured lift that may replace an action's assumed effect: significant (its interval excludes 0) and
    at least the minimum detectable effect of its groups (enough power to have seen it); else None."""
    lift, mde_, low, high = (result.get(k) for k in ("lift", "mde", "lift_low", "lift_high"))
    if not all(isinstance(v, float | int) for v in (lift, mde_, low, high)):
        return None
    assert isinstance(lift, float | int) and isinstance(mde_, float | int)
    assert isinstance(low, float | int) and isinstance(high, float | int)
    if not (low > 0 or high < 0) or abs(lift) < mde_:
        return None
    return float(lift)
