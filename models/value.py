"""Scoring: each customer's P(alive), expected purchases, expected order value and CLV, and value tiers."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from features.errors import InputError
from models.clv_base import Array
from models.histories import Histories, histories
from models.purchases import PurchaseModel
from models.spend import expected_order_value, lifetime_value, usable_spend


@dataclasses.dataclass(frozen=True)
class ValueSettings:
    """How predictions turn into value: horizons in ``base.time_unit`` units, discounting and margin."""

    horizon_units: float
    months: int
    units_per_month: float
    discount_rate_monthly: float
    margin_ratio: float


def score(
    purchases: PurchaseModel,
    spend_params: dict[str, float],
    frequency: Array,
    recency: Array,
    T: Array,
    monetary_value: Array,
    settings: ValueSettings,
    *,
    customer_histories: Histories | None = None,
) -> dict[str, Array]:
    """P(alive), expected purchases over the horizon, expected order value and CLV for each customer.

    The purchase model is evaluated once per unique (frequency, recency, T) history; ``customer_histories``, if
    given, must be ``histories(frequency, recency, T)`` (e.g. the ones the model was just fitted on).
    """
    h = customer_histories if customer_histories is not None else histories(frequency, recency, T)
    if h.n_customers != len(frequency):
        raise InputError(f"customer_histories describe {h.n_customers} customers, not {len(frequency)}")
    ok = usable_spend(frequency, monetary_value)
    aov = expected_order_value(spend_params, np.where(ok, frequency, 0.0), monetary_value)
    dp = purchases.discounted_purchases_histories(
        h,
        months=settings.months,
        discount_rate_monthly=settings.discount_rate_monthly,
        units_per_month=settings.units_per_month,
    )
    return {
        "p_alive": purchases.p_alive_histories(h)[h.inverse],
        "expected_purchases": purchases.expected_purchases_histories(settings.horizon_units, h)[h.inverse],
        "expected_order_value": aov,
        "clv": lifetime_value(dp[h.inverse], aov, margin_ratio=settings.margin_ratio),
    }


def value_tiers(clv: Array, *, high: float, mid: float) -> npt.NDArray[np.str_]:
    """``high`` from the ``high`` quantile of CLV up, ``mid`` from the ``mid`` quantile, ``low`` below."""
    values = np.asarray(clv, dtype=np.float64)
    q_high, q_mid = np.quantile(values, [high, mid])
    return np.where(values >= q_high, "high", np.where(values >= q_mid, "mid", "low"))
