"""The purchase model: BG/NBD, MBG/NBD or Pareto/NBD over lifetimes, fitted on weighted unique histories.

Besides the fit (with its ladder of remedies), this holds the model's conditional expectations with a series
2F1 where scipy's overflows, the discounted sum of expected purchases month by month that CLV needs, and the
rebuilding of a fitted model from stored parameters.

References: Fader, Hardie & Lee (2005a), "Counting your customers the easy way: an alternative to the Pareto/NBD
model", Marketing Science 24(2) (BG/NBD); Batislam, Denizel & Filiztekin (2007) (MBG/NBD); Schmittlein,
Morrison & Colombo (1987) (Pareto/NBD).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from typing import Any, Self, cast

import numpy as np
import pandas as pd
from lifetimes.utils import ConvergenceError
from scipy.special import gammaln, hyp2f1

from features.errors import InputError
from models.clv_base import (
    MIN_CUSTOMERS_TO_FIT,
    MODEL_NAMES,
    PARAM_NAMES,
    Array,
    ClvFitError,
    FitReport,
    LadderFitted,
    ModelName,
    check_ladder,
    fit_uncertainty,
    ladder_exhausted,
    quiet_fit,
    require_finite,
)
from models.histories import Histories, histories
from models.likelihoods import AnalyticBetaGeoFitter, AnalyticModifiedBetaGeoFitter, StableParetoNBDFitter

_FITTERS: dict[str, Any] = {
    "bgnbd": AnalyticBetaGeoFitter,  # lifetimes' fitter, its gradient written out (models.likelihoods)
    "mbgnbd": AnalyticModifiedBetaGeoFitter,
    "pareto_nbd": StableParetoNBDFitter,
}
# Rate parameters carry the time unit: lifetimes fits them on a time axis rescaled so that max(T) = 1.
_TIME_SCALED = {"alpha", "beta"}
# How each model is retried at a given penalizer: lifetimes' own optimiser first, then an alternative.
_VARIANTS: dict[str, tuple[str, ...]] = {
    "bgnbd": ("bfgs", "bounded"),
    "mbgnbd": ("bfgs", "bounded"),
    "pareto_nbd": ("nelder_mead", "nelder_mead_restart"),
}
# Box on lifetimes' log-parameters for the bounded retry: e^-20 .. e^20 spans every fit seen on real data.
_LOG_BOUNDS = (-20.0, 20.0)


def _attempt(penalizer: float, variant: str, exc: BaseException | None) -> dict[str, Any]:
    outcome = "converged" if exc is None else f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return {"penalizer_coef": penalizer, "variant": variant, "outcome": outcome}


# --- purchase model -------------------------------------------------------------------------------------------


class PurchaseModel(LadderFitted):
    """A BTYD purchase model (``bgnbd``, ``mbgnbd`` or ``pareto_nbd``) fitted on weighted unique histories.

    Parameters
    ----------
    model
        Which lifetimes model: BG/NBD (Fader, Hardie & Lee 2005a), MBG/NBD or Pareto/NBD.
    penalizer_ladder
        Increasing ``penalizer_coef`` values tried in turn until a fit converges with finite parameters and
        predictions. ``(0.0,)`` means no remedy.
    """

    def __init__(self, model: ModelName = "bgnbd", penalizer_ladder: Sequence[float] = (0.0,)) -> None:
        self.model = model
        self.penalizer_ladder = penalizer_ladder

    def fit(self, frequency: Any, recency: Any, T: Any) -> Self:
        """Fit on customer histories (one row per customer, in ``base.time_unit``)."""
        return self.fit_histories(histories(frequency, recency, T))

    def fit_histories(self, h: Histories, initial: dict[str, float] | None = None) -> Self:
        """Fit on already-collapsed histories (``weight`` customers per row); ``initial`` seeds the optimiser."""
        if self.model not in _FITTERS:
            raise InputError(f"model must be one of {', '.join(MODEL_NAMES)}; got {self.model!r}")
        ladder = check_ladder(self.penalizer_ladder)
        keep = h.weight > 0
        f, r, t, w = (h.values["frequency"][keep], h.values["recency"][keep], h.values["T"][keep], h.weight[keep])
        if w.sum() < MIN_CUSTOMERS_TO_FIT:
            raise ClvFitError(
                f"{self.model} needs the histories of at least {MIN_CUSTOMERS_TO_FIT} customers, got {w.sum():.0f}; "
                "use a log with more customers or a later cutoff"
            )
        init = None
        if initial is not None:
            scale = 1.0 / t.max()  # lifetimes fits on time rescaled so that max(T) = 1: start in its coordinates
            init = np.log([initial[n] * (scale if n in _TIME_SCALED else 1.0) for n in PARAM_NAMES[self.model]])
        attempts: list[dict[str, Any]] = []
        for pen in ladder:
            for variant in _VARIANTS[self.model]:
                fitter = _FITTERS[self.model](penalizer_coef=pen)
                # BFGS first (lifetimes' default). When the maximum lies on the boundary (no visible dropout: a -> 0,
                # b -> inf) BFGS stops with "precision loss"; L-BFGS-B on box-bounded log-parameters then converges
                # to the same r, alpha and predictions, which a penalizer does not (it shrinks r). See
                # bench/clv_convergence.py for the measurement on Online Retail. lifetimes fits Pareto/NBD with
                # Nelder-Mead from a *random* start; it gets a fixed start instead, and a second one on retry.
                extra: dict[str, Any] = {}
                start = init
                if variant == "bounded":
                    extra["bounds"] = [_LOG_BOUNDS] * len(PARAM_NAMES[self.model])
                elif variant.startswith("nelder_mead"):
                    if start is None:
                        start = np.zeros(4) if variant == "nelder_mead_restart" else np.ones(4)
                    elif variant == "nelder_mead_restart":
                        start = np.zeros(4)
                try:
                    quiet_fit(fitter, f.astype(np.int64), r, t, weights=w, initial_params=start, **extra)
                    params = np.array([float(fitter.params_[n]) for n in PARAM_NAMES[self.model]])
                    if not np.all(np.isfinite(params)) or not np.all(params > 0):
                        raise FloatingPointError(f"parameters {params.tolist()}")
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.filterwarnings("ignore", category=RuntimeWarning)
                        alive = np.asarray(fitter.conditional_probability_alive(f, r, t), dtype=np.float64)
                        # a fit can converge where the conditional expectation's hypergeometric term has a pole
                        # (a + b + x - 1 near a non-positive integer, seen with a, b -> 0 on Online Retail's
                        # December cutoffs): its predictions would be inf, so it is not accepted.
                        fit_h = Histories({"frequency": f, "recency": r, "T": t}, w, np.arange(len(w)))
                        expected = _Expectation(fitter, self.model, fit_h).up_to(float(t.max()))
                    if not np.all(np.isfinite(alive)):
                        raise FloatingPointError("P(alive) overflowed on the training histories")
                    if not np.all(np.isfinite(expected)):
                        raise FloatingPointError("expected purchases overflowed on the training histories")
                except (ConvergenceError, FloatingPointError, OverflowError, np.linalg.LinAlgError, ValueError) as exc:
                    attempts.append(_attempt(pen, variant, exc))
                    continue
                attempts.append(_attempt(pen, variant, None))
                self.variant_ = variant
                return self._converged(fitter, pen, attempts, w)
        raise ladder_exhausted(f"{self.model}: the fit did not converge on {int(w.sum())} customers", ladder, attempts)

    def _fitted(self) -> Any:
        if not hasattr(self, "fitter_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit() first")
        return self.fitter_

    @property
    def params_(self) -> dict[str, float]:
        fitter = self._fitted()
        return {n: float(fitter.params_[n]) for n in PARAM_NAMES[self.model]}

    def report(self) -> FitReport:
        """Fitted parameters with standard errors, 90% intervals and the remedy that was applied."""
        fitter = self._fitted()
        weights = np.asarray(fitter.data["weights"], dtype=np.float64)
        normaliser = weights.mean() if self.model == "pareto_nbd" else weights.sum()
        se, iv = fit_uncertainty(fitter, PARAM_NAMES[self.model], float(normaliser))
        # lifetimes' objective is -sum(w ll) / normaliser + penalizer * sum(scaled params^2)
        nll = float(fitter._negative_log_likelihood_) - self.penalizer_coef_ * sum(v**2 for v in self._scaled())
        # lifetimes' time axis is rescaled by s = 1 / max(T); each repeat purchase's density picks up a factor 1/s,
        # so the log-likelihood in base.time_unit (the one papers report) is shifted by sum(w x) log s.
        x, w = np.asarray(fitter.data["frequency"], dtype=np.float64), weights
        total_ll = -nll * normaliser + float(np.sum(w * x)) * float(np.log(fitter._scale))
        return FitReport(
            model=self.model,
            params=self.params_,
            standard_errors=se,
            interval_90=iv,
            penalizer_coef=self.penalizer_coef_,
            variant=self.variant_,
            attempts=self.attempts_,
            n_customers=self.n_customers_,
            n_histories=self.n_histories_,
            log_likelihood=float(total_ll),
        )

    def _scaled(self) -> list[float]:
        # lifetimes penalises the parameters in its rescaled time coordinates
        fitter = self._fitted()
        return [
            float(fitter.params_[n]) * (fitter._scale if n in _TIME_SCALED else 1.0) for n in PARAM_NAMES[self.model]
        ]

    def _checked(self, what: str, values: Array) -> Array:
        return require_finite(values, what, self.model, self.penalizer_coef_, self.penalizer_ladder)

    def p_alive_histories(self, h: Histories) -> Array:
        """P(alive) of each unique history in ``h`` (Fader, Hardie & Lee 2005a, eq. 12)."""
        fitter = self._fitted()
        uf, ur, ut = h.values["frequency"], h.values["recency"], h.values["T"]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            out = np.asarray(fitter.conditional_probability_alive(uf, ur, ut), dtype=np.float64)
        return np.clip(self._checked("conditional probability alive", out), 0, 1)

    def expected_purchases_histories(self, t: float, h: Histories) -> Array:
        """Expected repeat purchases in the next ``t`` time units for each unique history in ``h``."""
        with np.errstate(all="ignore"):
            out = _expectation(self._fitted(), h).up_to(t)
        return self._checked("expected purchases", out)

    def discounted_purchases_histories(
        self, h: Histories, *, months: int, discount_rate_monthly: float, units_per_month: float
    ) -> Array:
        """Sum over months i = 1..``months`` of expected purchases in month i, discounted by (1 + d)^i."""
        with np.errstate(all="ignore"):
            total = _expectation(self._fitted(), h).discounted(months, discount_rate_monthly, units_per_month)
        return self._checked("discounted purchases", total)

    def expected_purchases(self, t: float, frequency: Any, recency: Any, T: Any) -> Array:
        """Expected repeat purchases in the next ``t`` time units (Fader, Hardie & Lee 2005a, eq. 10 for BG/NBD)."""
        self._fitted()
        h = histories(frequency, recency, T)
        return self.expected_purchases_histories(t, h)[h.inverse]

    def p_alive(self, frequency: Any, recency: Any, T: Any) -> Array:
        """Probability that each customer is still active at the cutoff (Fader, Hardie & Lee 2005a, eq. 12)."""
        self._fitted()
        h = histories(frequency, recency, T)
        return self.p_alive_histories(h)[h.inverse]

    def discounted_purchases(
        self,
        frequency: Any,
        recency: Any,
        T: Any,
        *,
        months: int,
        discount_rate_monthly: float,
        units_per_month: float,
    ) -> Array:
        """Sum over months i = 1..``months`` of expected purchases in month i, discounted by (1 + d)^i."""
        self._fitted()
        h = histories(frequency, recency, T)
        total = self.discounted_purchases_histories(
            h, months=months, discount_rate_monthly=discount_rate_monthly, units_per_month=units_per_month
        )
        return total[h.inverse]


def _hyp2f1_series(a: Array, b: Array, c: Array, z: Array, *, max_terms: int = 200_000) -> Array:
    """Gauss's hypergeometric 2F1(a, b; c; z) for 0 <= z < 1 by summing its power series term by term.

    scipy's ``hyp2f1`` returns inf or nan for some arguments the BTYD expectations need (c = a + b + x - 1 < 0
    with z > 1/2 on short histories and long horizons); the series converges for every |z| < 1 and is exact
    there, only slower, so it is the fallback for those elements alone. A pole (c a non-positive integer)
    gives inf, as it should.
    """
    a, b, c, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c, z)))
    total = np.ones(a.shape)
    term = np.ones(a.shape)
    active = np.ones(a.shape, dtype=bool)
    with np.errstate(all="ignore"):
        for n in range(max_terms):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            term[idx] *= (a[idx] + n) * (b[idx] + n) / ((c[idx] + n) * (n + 1)) * z[idx]
            total[idx] += term[idx]
            small = np.abs(term[idx]) <= 1e-15 * np.abs(total[idx])
            active[idx[small | ~np.isfinite(total[idx])]] = False
    return total


def _model_name(fitter: Any) -> ModelName:
    return cast(ModelName, next(name for name, cls in _FITTERS.items() if type(fitter) is cls))


@dataclasses.dataclass(frozen=True)
class _Expectation:
    """The conditional expectation of purchases in the next t, split by what each part depends on.

    For BG/NBD (Fader, Hardie & Lee 2005a, eq. 10) and MBG/NBD (Batislam et al. 2007) it is a numerator that
    depends on (frequency, T) and t only, the 2F1 term and nearly all of the cost, over a denominator that depends
    on the history but not on t. So the numerator is evaluated once per distinct (frequency, T) pair and horizon
    (``Histories.ages``: at 10M customers tens of thousands of pairs against millions of histories), and the
    denominator once per history for every horizon. Each value is lifetimes' own expression, term for term.
    """

    fitter: Any
    model: ModelName
    h: Histories

    @property
    def ages(self) -> Histories:
        return self.h.ages

    @functools.cached_property
    def denominator(self) -> Array:
        r, alpha, a, b = self.fitter._unload_params("r", "alpha", "a", "b")
        x, recency, T = self.h.values["frequency"], self.h.values["recency"], self.h.values["T"]
        if self.model == "bgnbd":
            return cast(Array, 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + recency)) ** (r + x))
        return cast(Array, 1 + (a / (b + x)) * ((alpha + T) / (alpha + recency)) ** (r + x))

    def numerator(self, t: float) -> Array:
        """Per ``ages`` pair; where scipy's 2F1 overflows, the series 2F1 instead."""
        r, alpha, a, b = self.fitter._unload_params("r", "alpha", "a", "b")
        x, T = self.ages.values["frequency"], self.ages.values["T"]
        if self.model == "bgnbd":
            _a, _b, _c, _z = r + x, b + x, a + b + x - 1, t / (alpha + T + t)
            ln_hyp_term = np.log(hyp2f1(_a, _b, _c, _z))
            # lifetimes' equivalent form where the first overflows
            ln_hyp_term_alt = np.log(hyp2f1(_c - _a, _c - _b, _c, _z)) + (_c - _a - _b) * np.log(1 - _z)
            ln_hyp_term = np.where(np.isinf(ln_hyp_term), ln_hyp_term_alt, ln_hyp_term)
            second_term = 1 - np.exp(ln_hyp_term + (r + x) * np.log((alpha + T) / (alpha + t + T)))
            out = (a + b + x - 1) / (a - 1) * second_term
        else:
            hyp_term = hyp2f1(r + x, b + x + 1, a + b + x, t / (alpha + T + t))
            out = (a + b + x) / (a - 1) * (1 - hyp_term * ((alpha + T) / (alpha + t + T)) ** (r + x))
        bad = ~np.isfinite(out)
        if bad.any():
            xb, Tb = x[bad].astype(np.float64), T[bad]
            z = t / (alpha + Tb + t)
            shrink = ((alpha + Tb) / (alpha + Tb + t)) ** (r + xb)
            if self.model == "bgnbd":
                out[bad] = (a + b + xb - 1) / (a - 1) * (1 - _hyp2f1_series(r + xb, b + xb, a + b + xb - 1, z) * shrink)
            else:
                out[bad] = (a + b + xb) / (a - 1) * (1 - _hyp2f1_series(r + xb, b + xb + 1, a + b + xb, z) * shrink)
        return cast(Array, out)

    def up_to(self, t: float) -> Array:
        """Expected purchases in the next ``t`` for each history."""
        if self.model == "pareto_nbd":
            return self._pareto(t)
        return self.numerator(t)[self.ages.inverse] / self.denominator

    def discounted(self, months: int, rate: float, units_per_month: float) -> Array:
        """Sum over months i = 1..``months`` of expected purchases in month i, discounted by (1 + ``rate``)^i;
        for the BG/NBD models summed per (frequency, T) pair and divided by each history's denominator once."""
        if self.model == "pareto_nbd":
            cums = [self._pareto(i * units_per_month) for i in range(1, months + 1)]
        else:
            cums = [self.numerator(i * units_per_month) for i in range(1, months + 1)]
        total = np.zeros_like(cums[0])
        previous = np.zeros_like(cums[0])
        for i, cum in enumerate(cums, start=1):
            total += (cum - previous) / (1.0 + rate) ** i
            previous = cum
        if self.model == "pareto_nbd":
            return total
        return total[self.ages.inverse] / self.denominator

    @functools.cached_property
    def _pareto_terms(self) -> tuple[Array, Array]:
        """Pareto/NBD: the part of lifetimes' log expectation that does not depend on t, and the log-likelihood."""
        params = self.fitter._unload_params("r", "alpha", "s", "beta")
        r, alpha, s, beta = params
        x, t_x, T = self.h.values["frequency"], self.h.values["recency"], self.h.values["T"]
        likelihood = self.fitter._conditional_log_likelihood(params, x, t_x, T)
        log = np.log
        first_term = (
            gammaln(r + x) - gammaln(r) + r * log(alpha) + s * log(beta) - (r + x) * log(alpha + T) - s * log(beta + T)
        )
        second_term = np.log(r + x) + np.log(beta + T) - np.log(alpha + T)
        return first_term + second_term, likelihood

    def _pareto(self, t: float) -> Array:
        _, _, s, beta = self.fitter._unload_params("r", "alpha", "s", "beta")
        T = self.h.values["T"]
        base, likelihood = self._pareto_terms
        third_term = np.log((1 - ((beta + T) / (beta + T + t)) ** (s - 1)) / (s - 1))
        return cast(Array, np.exp(base + third_term - likelihood))


def _expectation(fitter: Any, h: Histories) -> _Expectation:
    return _Expectation(fitter, _model_name(fitter), h)


# --- rebuilding from stored parameters ------------------------------------------------------------------------


def purchase_model_from_params(model: ModelName, params: dict[str, float]) -> PurchaseModel:
    """A fitted ``PurchaseModel`` rebuilt from stored parameters (e.g. ``artifacts/clv/params.json``), no refit."""
    if model not in _FITTERS:
        raise InputError(f"model must be one of {', '.join(MODEL_NAMES)}; got {model!r}")
    missing = [n for n in PARAM_NAMES[model] if n not in params]
    if missing:
        raise InputError(f"{model}: stored parameters lack {missing}")
    pm = PurchaseModel(model)
    fitter = _FITTERS[model]()
    fitter.params_ = pd.Series({n: float(params[n]) for n in PARAM_NAMES[model]})
    pm.fitter_ = fitter
    pm.penalizer_coef_ = 0.0
    pm.variant_ = "stored"
    return pm
