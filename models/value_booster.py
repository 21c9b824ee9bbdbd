"""The CLV challenger: LightGBM predicting a customer's purchases and spend over the label horizon from the
features table (and the BTYD outputs the churn model also reads), and the value that follows over the CLV horizon.

Pure code. Two boosters share the churn model's settings (``churn.lightgbm``) and its production split: trained on
cutoffs whose horizon had ended, stopped early on the validation cutoff.

- purchases: Poisson objective on the horizon's repeat purchases (a count);
- spend: Tweedie objective on the horizon's spend (many exact zeros, a long right tail), with
  ``tweedie_variance_power`` between 1 (Poisson) and 2 (Gamma). A customer whose returns exceed their purchases in
  the horizon has a negative net spend there; the Tweedie loss needs a label >= 0, so such a label counts as 0.

**The horizon and ``clv.clv_horizon_months``.** The boosters learn the ``features.horizon_days`` window that every
training cutoff has observed; no cutoff has watched a customer for ``clv_horizon_months`` after it (CDNOW's holdout
is 39 weeks). The value over the CLV horizon (``horizon_value``) carries the predicted horizon spend forward as a
flat monthly rate, ``spend / (horizon_days / DAYS_PER_MONTH)`` a month, discounted month by month as the BTYD
models' CLV is, times the margin. The flat rate ignores dropout beyond the horizon, so the total over a long CLV
horizon is an upper-side figure; the factor is one constant for every customer, so the ranking (value tiers, Gini,
Spearman, top-decile capture) is exactly that of the predicted horizon spend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.errors import InputError
from models.churn import BoosterSettings
from models.clv_base import DAYS_PER_MONTH, Array

NAME = "lightgbm"  # the challenger's name among the CLV candidates
TARGETS = ("purchases", "spend")


def horizon_value(
    spend: Array, *, horizon_days: int, months: int, discount_rate_monthly: float, margin_ratio: float
) -> Array:
    """Profit over ``months`` from a predicted spend over ``horizon_days``: that spend as a flat monthly rate,
    each month i = 1..``months`` discounted by (1 + rate)^i, times the margin."""
    if horizon_days <= 0 or months < 1:
        raise InputError(f"horizon_value: horizon_days ({horizon_days}) and months ({months}) must be positive")
    monthly = np.asarray(spend, dtype=np.float64) / (horizon_days / DAYS_PER_MONTH)
    annuity = float(np.sum((1.0 + discount_rate_monthly) ** -np.arange(1, months + 1, dtype=np.float64)))
    return margin_ratio * monthly * annuity


def _params(settings: BoosterSettings, objective: dict[str, Any]) -> dict[str, Any]:
    return {**settings.params(), **objective}


@dataclasses.dataclass
class ValueBooster:
    """Poisson purchases and Tweedie spend over the label horizon; see the module's notes."""

    settings: BoosterSettings
    tweedie_variance_power: float  # in (1, 2): clv.challenger.tweedie_variance_power, checked with the params

    def objectives(self) -> dict[str, dict[str, Any]]:
        return {
            "purchases": {"objective": "poisson", "metric": "poisson"},
            "spend": {
                "objective": "tweedie",
                "metric": "tweedie",
                "tweedie_variance_power": self.tweedie_variance_power,
            },
        }

    def fit(
        self,
        X_train: pd.DataFrame,
        purchases_train: Any,
        spend_train: Any,
        X_valid: pd.DataFrame,
        purchases_valid: Any,
        spend_valid: Any,
    ) -> Self:
        """Both boosters on the training rows, each stopped early on the validation rows."""
        if list(X_train.columns) != list(X_valid.columns):
            raise InputError("clv challenger: training and validation features have different columns")
        labels = {
            "purchases": (purchases_train, purchases_valid),
            "spend": (spend_train, spend_valid),
        }
        self.boosters_: dict[str, lgb.Booster] = {}
        self.best_iterations_: dict[str, int] = {}
        for target, objective in self.objectives().items():
            y_train, y_valid = (self._label(target, y) for y in labels[target])
            train = lgb.Dataset(X_train, y_train, free_raw_data=True)
            valid = lgb.Dataset(X_valid, y_valid, reference=train)
            booster = lgb.train(
                _params(self.settings, objective),
                train,
                num_boost_round=self.settings.max_rounds,
                valid_sets=[valid],
                callbacks=[lgb.early_stopping(self.settings.early_stopping_rounds, verbose=False)],
            )
            self.boosters_[target] = booster
            self.best_iterations_[target] = int(booster.best_iteration or self.settings.max_rounds)
        self.features_ = list(X_train.columns)
        return self

    @staticmethod
    def _label(target: str, values: Any) -> np.ndarray:
        y = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise InputError(f"clv challenger: {int((~np.isfinite(y)).sum())} {target} labels are not numbers")
        return np.maximum(y, 0.0)  # a net-negative horizon (returns) is no spend to the Tweedie loss

    def predict(self, X: pd.DataFrame) -> tuple[Array, Array]:
        """Expected purchases and spend over the label horizon, per row of ``X``."""
        if not hasattr(self, "boosters_"):
            raise RuntimeError("this ValueBooster is not fitted yet; call fit() first")
        missing = [c for c in self.features_ if c not in X.columns]
        if missing:
            raise InputError(f"clv challenger input lacks feature column(s) {missing}")
        out = [
            np.asarray(self.boosters_[t].predict(X[self.features_], num_iteration=self.best_iterations_[t]), float)
            for t in TARGETS
        ]
        return out[0], out[1]

    def to_dict(self) -> dict[str, Any]:
        """The fitted boosters as text (LightGBM's model format, early-stopped trees only) and what they read."""
        if not hasattr(self, "boosters_"):
            raise RuntimeError("this ValueBooster is not fitted yet; call fit() first")
        return {
            "name": NAME,
            "tweedie_variance_power": self.tweedie_variance_power,
            "features": self.features_,
            "best_iterations": dict(self.best_iterations_),
            "boosters": {t: self.boosters_[t].model_to_string(num_iteration=self.best_iterations_[t]) for t in TARGETS},
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> ValueBooster:
        """A fitted challenger from ``to_dict``'s document: it predicts, never refits."""
        try:
            boosters = {t: lgb.Booster(model_str=doc["boosters"][t]) for t in TARGETS}
            model = cls.__new__(cls)
            model.tweedie_variance_power = float(doc["tweedie_variance_power"])
            model.features_ = [str(c) for c in doc["features"]]
            model.best_iterations_ = {t: int(doc["best_iterations"][t]) for t in TARGETS}
        except (KeyError, TypeError, ValueError, lgb.basic.LightGBMError) as exc:
            raise InputError(f"{where}: the CLV challenger cannot be read ({exc!r}); retrain it (train_clv)") from exc
        for t, booster in boosters.items():
            if list(booster.feature_name()) != model.features_:
                raise InputError(f"{where}: the CLV challenger's {t} booster reads other features than it lists")
        model.boosters_ = boosters
        return model
