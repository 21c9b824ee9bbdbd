"""The CLV challenger: its horizon carried to clv.clv_horizon_months, and what its boosters recover from a process
whose expected purchases and spend are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.errors import InputError
from models import backtest as bt
from models import value_booster as vb
from models.churn import BoosterSettings
from models.clv_base import DAYS_PER_MONTH
from pipeline.config import ClvConfig, ConfigError, section
from tests.conftest import project_params


def test_the_horizon_spend_becomes_a_flat_discounted_monthly_rate() -> None:
    # 90 days' spend of 90 is 30.44 a month; twelve months at 1% a month discount to 11.2551 months; margin 0.3
    value = vb.horizon_value(np.array([90.0]), horizon_days=90, months=12, discount_rate_monthly=0.01, margin_ratio=0.3)
    annuity = sum(1.01**-i for i in range(1, 13))
    assert annuity == pytest.approx(11.2551, abs=1e-4)
    assert value[0] == pytest.approx(0.3 * 90 / (90 / DAYS_PER_MONTH) * annuity)
    assert value[0] == pytest.approx(102.77, abs=0.01)
    # undiscounted, a CLV horizon as long as the label horizon gives back the horizon's profit
    same = vb.horizon_value(
        np.array([50.0]), horizon_days=round(3 * DAYS_PER_MONTH), months=3, discount_rate_monthly=0.0, margin_ratio=0.3
    )
    assert same[0] == pytest.approx(0.3 * 50.0, rel=0.01)
    # one factor for everyone: the value ranks customers exactly as the predicted horizon spend does
    spend = np.random.default_rng(0).gamma(0.5, 40.0, 1000)
    carried = vb.horizon_value(spend, horizon_days=90, months=24, discount_rate_monthly=0.02, margin_ratio=0.25)
    assert np.array_equal(np.argsort(carried, kind="stable"), np.argsort(spend, kind="stable"))
    with pytest.raises(InputError, match="must be positive"):
        vb.horizon_value(spend, horizon_days=0, months=12, discount_rate_monthly=0.01, margin_ratio=0.3)


def settings(seed: int = 7) -> BoosterSettings:
    return BoosterSettings(
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=50,
        feature_fraction=1.0,
        bagging_fraction=1.0,
        lambda_l2=1.0,
        max_rounds=1000,
        early_stopping_rounds=50,
        seed=seed,
        threads=2,
    )


def customers(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Customers whose horizon purchases are Poisson with a known rate and whose orders are Gamma with a known mean;
    ``noise`` carries no signal. Net returns make a few spends negative."""
    x = pd.DataFrame({"activity": rng.normal(size=n), "basket": rng.normal(size=n), "noise": rng.normal(size=n)})
    rate = np.exp(-0.7 + 0.8 * x["activity"].to_numpy())
    order = np.exp(3.0 + 0.4 * x["basket"].to_numpy())
    purchases = rng.poisson(rate)
    spend = np.array([rng.gamma(4.0, m / 4.0, k).sum() for k, m in zip(purchases, order, strict=True)])
    spend[rng.random(n) < 0.01] *= -0.2  # returns beyond purchases: a net-negative horizon
    return x, purchases.astype(float), spend, rate, rate * order


def test_the_boosters_recover_known_expected_purchases_and_spend() -> None:
    rng = np.random.default_rng(11)
    x_train, p_train, s_train, _, _ = customers(rng, 20_000)
    x_valid, p_valid, s_valid, _, _ = customers(rng, 5_000)
    x_test, _, _, rate, mean_spend = customers(rng, 5_000)
    booster = vb.ValueBooster(settings(), tweedie_variance_power=1.2).fit(
        x_train, p_train, s_train, x_valid, p_valid, s_valid
    )
    purchases, spend = booster.predict(x_test)
    # rankings of the true expectations, and totals within a few percent of them
    assert spearmanr(purchases, rate).statistic > 0.95
    assert spearmanr(spend, mean_spend).statistic > 0.9
    assert purchases.sum() / rate.sum() == pytest.approx(1.0, abs=0.05)
    assert spend.sum() / mean_spend.sum() == pytest.approx(1.0, abs=0.06)
    assert (spend >= 0).all() and (purchases >= 0).all()
    # same data and settings, the same trees
    again = vb.ValueBooster(settings(), tweedie_variance_power=1.2).fit(
        x_train, p_train, s_train, x_valid, p_valid, s_valid
    )
    np.testing.assert_array_equal(again.predict(x_test)[1], spend)


def test_bad_challenger_inputs_are_one_line_errors() -> None:
    params = project_params()
    params["clv"]["challenger"]["tweedie_variance_power"] = 2.0
    with pytest.raises(
        ConfigError, match=r"clv.challenger.tweedie_variance_power must lie strictly between 1 \(Poisson\)"
    ):
        section(params, "clv", ClvConfig)
    rng = np.random.default_rng(3)
    x, p, spend, _, _ = customers(rng, 2_000)
    booster = vb.ValueBooster(settings(), tweedie_variance_power=1.5)
    with pytest.raises(InputError, match="1 spend labels are not numbers"):
        booster.fit(x, p, np.where(np.arange(len(spend)) == 5, np.nan, spend), x, p, spend)
    with pytest.raises(InputError, match="different columns"):
        booster.fit(x, p, spend, x.drop(columns="noise"), p, spend)
    booster.fit(x, p, spend, x, p, spend)
    with pytest.raises(InputError, match=r"lacks feature column\(s\) \['basket'\]"):
        booster.predict(x.drop(columns="basket"))


def gains(pairs: dict[tuple[str, str], tuple[float, float, float]]) -> list[dict[str, object]]:
    return [
        {"candidate": a, "versus": b, "pooled_gain": g, "low": lo, "high": hi} for (a, b), (g, lo, hi) in pairs.items()
    ]


def test_the_clv_challenger_serves_only_over_the_best_of_btyd_and_naive_and_naive_never_serves() -> None:
    pooled = {
        "bgnbd": {"gini": 0.714},
        "pareto_nbd": {"gini": 0.724},
        "naive": {"gini": 0.718},
        "lightgbm": {"gini": 0.743},
    }
    shown = bt.serving_choice(
        "gini", pooled, gains({("lightgbm", "pareto_nbd"): (0.019, 0.009, 0.029)}), 0.002, challenger="lightgbm",
        unservable=("naive",),
    )  # fmt: skip
    assert (shown["scorer"], shown["best_rule"]) == ("lightgbm", "pareto_nbd")
    assert (
        shown["reason"]
        == "lightgbm serves: gini gain over pareto_nbd +0.0190 [+0.0090, +0.0290]; its lower bound clears zero and "
        "0.002"
    )
    # the naive baseline ranking best sets the bar; a BTYD model serves in its place, and the reason says so
    pooled["naive"]["gini"] = 0.75
    refused = bt.serving_choice(
        "gini", pooled, gains({("lightgbm", "naive"): (-0.007, -0.015, 0.001)}), 0.002, challenger="lightgbm",
        unservable=("naive",),
    )  # fmt: skip
    assert (refused["scorer"], refused["best_rule"]) == ("pareto_nbd", "naive")
    assert refused["reason"] == (
        "pareto_nbd serves: lightgbm's gini gain over naive -0.0070 [-0.0150, +0.0010] does not clear zero and 0.002; "
        "naive ranks best (0.7500 against pareto_nbd's 0.7240) but is a yardstick that cannot value customers"
    )
    # an error metric: the best rule is the lowest
    errors = {"bgnbd": {"purchases_rmse": 0.66}, "pareto_nbd": {"purchases_rmse": 0.67}, "lightgbm": {}}
    errors["lightgbm"]["purchases_rmse"] = 0.65
    rmse = bt.serving_choice(
        "purchases_rmse", errors, gains({("lightgbm", "bgnbd"): (0.01, -0.002, 0.02)}), 0.0, challenger="lightgbm"
    )
    assert (rmse["scorer"], rmse["best_rule"]) == ("bgnbd", "bgnbd")
