"""The spend model: Gamma-Gamma over lifetimes, fitted on repeat buyers, and CLV as margin x spend x purchases.

Reference: Fader, Hardie & Lee (2005b), "RFM and CLV: using iso-value curves for customer base analysis",
JMR 42(4) (Gamma-Gamma, CDNOW).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from lifetimes.utils import ConvergenceError

from models.clv_base import (
    MIN_CUSTOMERS_TO_FIT,
    PARAM_NAMES,
    Array,
    ClvFitError,
    FitReport,
    LadderFitted,
    check_ladder,
    check_spend,
    fit_uncertainty,
    float_column,
    ladder_exhausted,
    quiet_fit,
)
from models.histories import Histories, unique_histories
from models.likelihoods import AnalyticGammaGammaFitter


class SpendModel(LadderFitted):
    """Gamma-Gamma model of the average spend per purchase, fitted on repeat buyers only.

    Its expectation is finite only for ``q > 1``; a fit with ``q <= 1`` is refitted with lifetimes'
    ``q_constraint``, then up the penalizer ladder.
    """

    def __init__(self, penalizer_ladder: Sequence[float] = (0.0,)) -> None:
        self.penalizer_ladder = penalizer_ladder

    def fit(self, frequency: Any, monetary_value: Any) -> Self:
        """Fit on repeat buyers: ``frequency`` >= 1 and ``monetary_value`` > 0 (the mean repeat spend)."""
        f, m = check_spend(frequency, monetary_value)
        # Spend told apart to 1e-9: a mean spend summed in another order by the engine (a last-bit difference
        # from run to run) would otherwise split a history in two and move the optimiser's path along the flat
        # (p, q, v) ridge, by up to 1e-4 relative at 10M customers.
        h = unique_histories(frequency=f, monetary_value=np.round(m, 9))
        return self.fit_histories(h)

    def fit_histories(self, h: Histories, initial: dict[str, float] | None = None) -> Self:
        ladder = check_ladder(self.penalizer_ladder)
        keep = h.weight > 0
        f, m, w = h.values["frequency"][keep], h.values["monetary_value"][keep], h.weight[keep]
        if w.sum() < MIN_CUSTOMERS_TO_FIT:
            raise ClvFitError(
                f"Gamma-Gamma needs at least {MIN_CUSTOMERS_TO_FIT} repeat buyers with a positive mean repeat spend, "
                f"got {w.sum():.0f}: the spend per purchase cannot be modelled from first purchases alone; "
                "use a longer history or a later clv.calibration_cutoff"
            )
        init = None if initial is None else np.log([initial[n] for n in PARAM_NAMES["gamma_gamma"]])
        attempts: list[dict[str, Any]] = []
        for pen in ladder:
            for constrained in (False, True):
                fitter = AnalyticGammaGammaFitter(penalizer_coef=pen)
                try:
                    quiet_fit(fitter, f.astype(np.int64), m, weights=w, initial_params=init, q_constraint=constrained)
                    params = np.array([float(fitter.params_[n]) for n in PARAM_NAMES["gamma_gamma"]])
                    if not np.all(np.isfinite(params)):
                        raise FloatingPointError(f"parameters {params.tolist()}")
                    if params[1] <= 1:
                        raise FloatingPointError(f"q = {params[1]:.4g} <= 1: the mean spend is infinite")
                except (ConvergenceError, FloatingPointError, OverflowError, np.linalg.LinAlgError, ValueError) as exc:
                    attempts.append(
                        {
                            "penalizer_coef": pen,
                            "q_constraint": constrained,
                            "outcome": f"{type(exc).__name__}: {str(exc).strip()[:160]}",
                        }
                    )
                    continue
                attempts.append({"penalizer_coef": pen, "q_constraint": constrained, "outcome": "converged"})
                return self._converged(fitter, pen, attempts, w)
        raise ladder_exhausted(
            f"gamma_gamma: the fit did not converge on {int(w.sum())} repeat buyers", ladder, attempts
        )

    @property
    def params_(self) -> dict[str, float]:
        if not hasattr(self, "fitter_"):
            raise RuntimeError("this SpendModel is not fitted yet; call fit() first")
        return {n: float(self.fitter_.params_[n]) for n in PARAM_NAMES["gamma_gamma"]}

    def report(self) -> FitReport:
        params = self.params_
        weights = np.asarray(self.fitter_.data["weights"], dtype=np.float64)
        se, iv = fit_uncertainty(self.fitter_, PARAM_NAMES["gamma_gamma"], float(weights.sum()))
        nll = float(self.fitter_._negative_log_likelihood_) - self.penalizer_coef_ * sum(v**2 for v in params.values())
        return FitReport(
            model="gamma_gamma",
            params=params,
            standard_errors=se,
            interval_90=iv,
            penalizer_coef=self.penalizer_coef_,
            variant="bfgs",
            attempts=self.attempts_,
            n_customers=self.n_customers_,
            n_histories=self.n_histories_,
            log_likelihood=-nll * float(weights.sum()),
        )

    def expected_order_value(self, frequency: Any, monetary_value: Any) -> Array:
        """E(spend per purchase | x, m): see :func:`expected_order_value`."""
        return expected_order_value(
            self.params_, float_column("frequency", frequency), float_column("monetary_value", monetary_value)
        )


def expected_order_value(params: dict[str, float], frequency: Array, monetary_value: Array) -> Array:
    """Expected spend per purchase given ``frequency`` repeat purchases averaging ``monetary_value``.

    Fader, Hardie & Lee (2005b), eq. 5 (Fader & Hardie note 025, eq. 5): a weighted mean of the population mean
    p v / (q - 1) and the customer's own average, the weight on the latter growing with ``frequency``. A customer
    with ``frequency`` 0 gets the population mean, whatever ``monetary_value`` holds.
    """
    p, q, v = params["p"], params["q"], params["v"]
    if q <= 1:
        raise ClvFitError(f"gamma_gamma: q = {q:.4g} <= 1 gives an infinite mean spend; refit with a penalizer_coef")
    x = np.asarray(frequency, dtype=np.float64)
    m = np.where(x > 0, np.asarray(monetary_value, dtype=np.float64), 0.0)
    population = p * v / (q - 1)
    weight = p * x / (p * x + q - 1)
    out = (1 - weight) * population + weight * m
    if not np.all(np.isfinite(out)):
        raise ClvFitError("gamma_gamma: non-finite expected order value; check monetary_value for overflow")
    return out


def lifetime_value(discounted_purchases: Array, expected_order_value: Array, *, margin_ratio: float) -> Array:
    """CLV as profit: margin x expected spend per purchase x discounted expected purchases."""
    return margin_ratio * expected_order_value * discounted_purchases


def usable_spend(frequency: Array, monetary_value: Array) -> npt.NDArray[np.bool_]:
    """Repeat buyers whose mean repeat spend is positive: the customers Gamma-Gamma can learn from.

    A repeat buyer whose returns net their repeat spend to zero or below is scored with the population mean
    spend, like a one-time buyer; the stage counts them.
    """
    return (np.asarray(frequency) > 0) & (np.asarray(monetary_value) > 0)
