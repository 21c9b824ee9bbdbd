"""Customer lifetime value: a BTYD purchase model (BG/NBD, MBG/NBD or Pareto/NBD) and Gamma-Gamma spend, over lifetimes.

Pure code: arrays in, arrays out. The wrapper adds what lifetimes leaves to its users:

- inputs are validated *before* any cast (a frequency of 1.5 is rejected, not truncated), with errors that name
  the column, the count and an example;
- fits run on weighted unique ``(frequency, recency, T)`` histories (lifetimes' ``weights``), so the cost grows
  with the number of distinct histories, not customers; predictions are made per history and joined back;
- a fit that does not converge, or whose parameters or predictions overflow, is retried up a ladder of
  ``penalizer_coef`` values, and every attempt is recorded; when all fail, ``ClvFitError`` names the next
  ``penalizer_coef`` to try. No NaN or infinite value is ever returned.

References: Fader, Hardie & Lee (2005a), "Counting your customers the easy way: an alternative to the Pareto/NBD
model", Marketing Science 24(2) (BG/NBD); Fader, Hardie & Lee (2005b), "RFM and CLV: using iso-value curves for
customer base analysis", JMR 42(4) (Gamma-Gamma, CDNOW); Batislam, Denizel & Filiztekin (2007) (MBG/NBD);
Schmittlein, Morrison & Colombo (1987) (Pareto/NBD).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Self, cast

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd
import threadpoolctl
from lifetimes import ParetoNBDFitter
from lifetimes.utils import ConvergenceError

from features.errors import InputError
from models.likelihoods import AnalyticBetaGeoFitter, AnalyticGammaGammaFitter, AnalyticModifiedBetaGeoFitter

ModelName = Literal["bgnbd", "mbgnbd", "pareto_nbd"]
MODEL_NAMES: tuple[ModelName, ...] = ("bgnbd", "mbgnbd", "pareto_nbd")
_FITTERS: dict[str, Any] = {
    "bgnbd": AnalyticBetaGeoFitter,  # lifetimes' fitter, its gradient written out (models.likelihoods)
    "mbgnbd": AnalyticModifiedBetaGeoFitter,
    "pareto_nbd": ParetoNBDFitter,
}
PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "bgnbd": ("r", "alpha", "a", "b"),
    "mbgnbd": ("r", "alpha", "a", "b"),
    "pareto_nbd": ("r", "alpha", "s", "beta"),
    "gamma_gamma": ("p", "q", "v"),
}
# Rate parameters carry the time unit: lifetimes fits them on a time axis rescaled so that max(T) = 1.
_TIME_SCALED = {"alpha", "beta"}

# Mean month in days (365.25 / 12); CLV sums expected purchases month by month.
DAYS_PER_MONTH = 365.25 / 12
_Z90 = 1.6448536269514722  # standard normal 95th percentile: a two-sided 90% interval
# How each model is retried at a given penalizer: lifetimes' own optimiser first, then an alternative.
_VARIANTS: dict[str, tuple[str, ...]] = {
    "bgnbd": ("bfgs", "bounded"),
    "mbgnbd": ("bfgs", "bounded"),
    "pareto_nbd": ("nelder_mead", "nelder_mead_restart"),
}
# Box on lifetimes' log-parameters for the bounded retry: e^-20 .. e^20 spans every fit seen on real data.
_LOG_BOUNDS = (-20.0, 20.0)

Array = npt.NDArray[np.float64]


class ClvFitError(InputError):
    """A model could not be fitted, or it produced a non-finite value, even after every remedy."""


# Fewer customers than this cannot pin down a model's 3-4 heterogeneity parameters: the fit may "converge" to a
# corner and every downstream ranking metric is undefined. Refuse instead of returning a meaningless model.
MIN_CUSTOMERS_TO_FIT = 20


# --- validation -----------------------------------------------------------------------------------------------


def _numeric(name: str, values: Any) -> Array:
    """``values`` as float64 without truncation; a non-numeric column is an error, not a cast."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a one-dimensional column, got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _fail_where(name: str, bad: npt.NDArray[np.bool_], values: Array, what: str, hint: str) -> None:
    n = int(bad.sum())
    if n:
        example = float(values[np.flatnonzero(bad)[0]])
        raise InputError(f"{name}: {n} {what} (e.g. {example!r}); {hint}")


def check_histories(frequency: Any, recency: Any, T: Any) -> tuple[Array, Array, Array]:
    """Validate BTYD histories and return them as float arrays.

    Raises ``InputError`` (a ``ValueError``) naming the column and the number of offending rows for: a length
    mismatch or an empty input, NaN or infinite values, negative values, a non-integer ``frequency``,
    ``recency`` greater than ``T``, and a non-zero ``recency`` where ``frequency`` is 0.
    """
    cols = {"frequency": _numeric("frequency", frequency), "recency": _numeric("recency", recency)}
    cols["T"] = _numeric("T", T)
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"frequency, recency, T: lengths differ {lengths}")
    if lengths["frequency"] == 0:
        raise InputError("frequency, recency, T: no customers to fit or score")
    for name, v in cols.items():
        _fail_where(name, ~np.isfinite(v), v, "NaN or infinite values", "every customer needs a finite history")
        _fail_where(name, v < 0, v, "negative values", "counts and ages cannot be negative")
    f, r, t = cols["frequency"], cols["recency"], cols["T"]
    _fail_where("frequency", f != np.round(f), f, "non-integer values", "frequency counts repeat purchase periods")
    _fail_where("recency", r > t, r, "values greater than T", "the last purchase cannot be after the cutoff")
    _fail_where(
        "recency", (f == 0) & (r != 0), r, "non-zero values where frequency is 0", "one-time buyers have recency 0"
    )
    return f, r, t


def check_spend(frequency: Any, monetary_value: Any) -> tuple[Array, Array]:
    """Validate the repeat buyers' spend for Gamma-Gamma: ``frequency`` >= 1 and finite ``monetary_value`` > 0."""
    f = _numeric("frequency", frequency)
    m = _numeric("monetary_value", monetary_value)
    if len(f) != len(m):
        raise InputError(f"frequency, monetary_value: lengths differ ({len(f)} and {len(m)})")
    if len(f) == 0:
        raise InputError("monetary_value: no repeat buyers; Gamma-Gamma needs customers with frequency >= 1")
    _fail_where("frequency", ~np.isfinite(f), f, "NaN or infinite values", "pass repeat buyers only")
    _fail_where("frequency", f != np.round(f), f, "non-integer values", "frequency counts repeat purchase periods")
    _fail_where("frequency", f < 1, f, "values below 1", "Gamma-Gamma is fitted on repeat buyers only")
    _fail_where("monetary_value", ~np.isfinite(m), m, "NaN or infinite values", "every repeat buyer needs a spend")
    _fail_where(
        "monetary_value", m <= 0, m, "values <= 0", "Gamma-Gamma needs positive spend; leave these customers out"
    )
    return f, m


# --- weighted unique histories --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Histories:
    """Distinct rows of a set of columns, how many customers share each, and each customer's row."""

    values: dict[str, Array]
    weight: npt.NDArray[np.int64]
    inverse: npt.NDArray[np.int64]

    @property
    def n_customers(self) -> int:
        return len(self.inverse)

    def __len__(self) -> int:
        return len(self.weight)


def unique_histories(**columns: Array) -> Histories:
    """Collapse customers with identical values in ``columns`` into one weighted row.

    Each column is factorised on its own (sorted) and the codes are packed into one integer key, factorised again:
    under a second for 10M customers and three columns, a fraction of a grouped DataFrame. When the next column
    would overflow the key, the key so far is factorised first (it then counts at most one code per row). The rows
    come sorted by the columns' values, in the order given, so fits on them do not depend on the customers' order.
    A NaN has no history to share: it is an error.
    """
    names = list(columns)
    codes: list[npt.NDArray[np.int64]] = []
    uniques: list[Array] = []
    for name, column in columns.items():
        c, u = pd.factorize(column, sort=True)
        if len(c) and c.min() < 0:
            raise InputError(f"{name}: {int((c < 0).sum())} missing value(s); every customer needs a value")
        codes.append(c.astype(np.int64, copy=False))
        uniques.append(np.asarray(u))
    key = codes[0]  # packed in place: at 10M customers every extra array costs its first touch of 80 MB
    span = len(uniques[0])  # key < span
    steps: list[tuple[str, Any]] = []  # how the key was built, to decode it: ("pack", size) or ("renumber", old)
    for c, u in zip(codes[1:], uniques[1:], strict=True):
        if float(span) * len(u) >= 2.0**62:
            key, old = _refactorise(key)
            steps.append(("renumber", old))
            span = len(old)
        key *= len(u)
        key += c
        span *= len(u)
        steps.append(("pack", len(u)))
    inverse, distinct = pd.factorize(key, sort=True)
    inverse = inverse.astype(np.int64, copy=False)
    rest = np.asarray(distinct, dtype=np.int64)
    parts: list[npt.NDArray[np.int64]] = []
    for kind, data in reversed(steps):
        if kind == "pack":
            rest, part = np.divmod(rest, data)
            parts.append(part)
        else:
            rest = data[rest]
    parts.append(rest)
    values = {n: u[part] for n, u, part in zip(names, uniques, reversed(parts), strict=True)}
    weight = np.bincount(inverse, minlength=len(distinct)).astype(np.int64)
    return Histories(values=values, weight=weight, inverse=inverse)


def _refactorise(key: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``key`` renumbered 0..k-1 in sorted order, and the old key value of each new code."""
    inverse, distinct = pd.factorize(key, sort=True)
    return inverse.astype(np.int64, copy=False), np.asarray(distinct, dtype=np.int64)


def histories(frequency: Any, recency: Any, T: Any) -> Histories:
    """Validated customer histories (see ``check_histories``) collapsed to weighted unique rows.

    Fitting and scoring both work on these: build them once and pass them to ``PurchaseModel.fit_histories`` and
    ``score`` when the same customers are fitted and scored.
    """
    f, r, t = check_histories(frequency, recency, T)
    return unique_histories(frequency=f, recency=r, T=t)


# --- fitted parameters ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitReport:
    """What a fit produced and how it got there, for artifacts and MLflow."""

    model: str
    params: dict[str, float]
    standard_errors: dict[str, float]
    interval_90: dict[str, tuple[float, float]]
    penalizer_coef: float
    variant: str
    attempts: list[dict[str, Any]]
    n_customers: int
    n_histories: int
    log_likelihood: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["interval_90"] = {k: list(v) for k, v in self.interval_90.items()}
        return out


def _uncertainty(
    fitter: Any, names: Sequence[str], normaliser: float
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Standard errors and 90% intervals from the Hessian of the total negative log-likelihood.

    lifetimes optimises log-parameters and averages the likelihood over customers; the Hessian it keeps is of
    that average, so it is multiplied back by ``normaliser`` (what lifetimes divided by). The interval is
    symmetric in log space, hence positive; the standard error is the delta-method one, theta * se(log theta).
    (lifetimes' own ``standard_errors_`` is off by a factor of sqrt(n) for Pareto/NBD, which divides by the
    mean weight instead of the sum.)
    """
    params = np.array([float(fitter.params_[n]) for n in names])
    try:
        cov_log = np.linalg.inv(np.asarray(fitter._hessian_, dtype=np.float64) * normaliser)
    except np.linalg.LinAlgError:
        cov_log = np.full((len(names), len(names)), np.nan)
    var_log = np.diag(cov_log)
    se_log = np.sqrt(np.where(var_log > 0, var_log, np.nan))
    se = {n: float(p * s) for n, p, s in zip(names, params, se_log, strict=True)}
    with np.errstate(over="ignore"):  # a flat direction (a parameter at its bound) has an unbounded interval
        iv = {
            n: (float(p * np.exp(-_Z90 * s)), float(p * np.exp(_Z90 * s)))
            for n, p, s in zip(names, params, se_log, strict=True)
        }
    return se, iv


def _quiet_fit(fitter: Any, *args: Any, **kwargs: Any) -> Any:
    """Fit without lifetimes' prints (it prints the optimiser state on failure) and its overflow warnings."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return fitter.fit(*args, **kwargs)


def _attempt(penalizer: float, variant: str, exc: BaseException | None) -> dict[str, Any]:
    outcome = "converged" if exc is None else f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return {"penalizer_coef": penalizer, "variant": variant, "outcome": outcome}


def _next_penalizer(ladder: Sequence[float]) -> float:
    top = max(ladder)
    return 0.001 if top == 0 else top * 10


def _check_ladder(ladder: Sequence[float]) -> tuple[float, ...]:
    if not ladder or any(p < 0 or not np.isfinite(p) for p in ladder) or list(ladder) != sorted(ladder):
        raise InputError(f"penalizer_ladder must be increasing values >= 0, got {list(ladder)}")
    return tuple(float(p) for p in ladder)


def _finite(x: Array, what: str, model: str, penalizer: float, ladder: Sequence[float]) -> Array:
    bad = ~np.isfinite(x)
    if bad.any():
        raise ClvFitError(
            f"{model}: {int(bad.sum())} non-finite {what} with penalizer_coef={penalizer}; refit with a larger "
            f"penalizer_coef (try {_next_penalizer(ladder)})"
        )
    return x


# --- purchase model -------------------------------------------------------------------------------------------


class PurchaseModel:
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
        ladder = _check_ladder(self.penalizer_ladder)
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
                    _quiet_fit(fitter, f.astype(np.int64), r, t, weights=w, initial_params=start, **extra)
                    params = np.array([float(fitter.params_[n]) for n in PARAM_NAMES[self.model]])
                    if not np.all(np.isfinite(params)) or not np.all(params > 0):
                        raise FloatingPointError(f"parameters {params.tolist()}")
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.filterwarnings("ignore", category=RuntimeWarning)
                        alive = np.asarray(fitter.conditional_probability_alive(f, r, t), dtype=np.float64)
                        # a fit can converge where the conditional expectation's hypergeometric term has a pole
                        # (a + b + x - 1 near a non-positive integer, seen with a, b -> 0 on Online Retail's
                        # December cutoffs): its predictions would be inf, so it is not accepted.
                        expected = _conditional_expected(fitter, self.model, float(t.max()), f, r, t)
                    if not np.all(np.isfinite(alive)):
                        raise FloatingPointError("P(alive) overflowed on the training histories")
                    if not np.all(np.isfinite(expected)):
                        raise FloatingPointError("expected purchases overflowed on the training histories")
                except (ConvergenceError, FloatingPointError, OverflowError, np.linalg.LinAlgError, ValueError) as exc:
                    attempts.append(_attempt(pen, variant, exc))
                    continue
                attempts.append(_attempt(pen, variant, None))
                self.fitter_ = fitter
                self.penalizer_coef_ = pen
                self.variant_ = variant
                self.attempts_ = attempts
                self.n_customers_ = int(w.sum())
                self.n_histories_ = len(w)
                return self
        raise ClvFitError(
            f"{self.model}: the fit did not converge on {int(w.sum())} customers with penalizer_coef in "
            f"{list(ladder)} ({attempts[-1]['outcome']}); add a larger penalizer_coef to the ladder "
            f"(try {_next_penalizer(ladder)})"
        )

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
        se, iv = _uncertainty(fitter, PARAM_NAMES[self.model], float(normaliser))
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
        return _finite(values, what, self.model, self.penalizer_coef_, self.penalizer_ladder)

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
        uf, ur, ut = h.values["frequency"], h.values["recency"], h.values["T"]
        return self._checked("expected purchases", _conditional_expected(self._fitted(), self.model, t, uf, ur, ut))

    def discounted_purchases_histories(
        self, h: Histories, *, months: int, discount_rate_monthly: float, units_per_month: float
    ) -> Array:
        """Sum over months i = 1..``months`` of expected purchases in month i, discounted by (1 + d)^i."""
        total = _discounted(self._fitted(), h, months, discount_rate_monthly, units_per_month)
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


def _conditional_expected(fitter: Any, model: ModelName, t: float, f: Array, r: Array, T: Array) -> Array:
    """lifetimes' conditional expected purchases in ``t``, with a series 2F1 where scipy's overflows.

    The formulas are Fader, Hardie & Lee (2005a) eq. 10 for BG/NBD and Batislam et al. (2007) for MBG/NBD, as
    lifetimes writes them; Pareto/NBD's expectation needs no 2F1 and is returned as lifetimes computes it.
    """
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        out = np.asarray(fitter.conditional_expected_number_of_purchases_up_to_time(t, f, r, T), dtype=np.float64)
    bad = ~np.isfinite(out)
    if not bad.any() or model == "pareto_nbd":
        return out
    p = {n: float(fitter.params_[n]) for n in PARAM_NAMES[model]}
    rr, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
    x, rec, age = f[bad].astype(np.float64), r[bad], T[bad]
    z = t / (alpha + age + t)
    shrink = ((alpha + age) / (alpha + age + t)) ** (rr + x)
    with np.errstate(all="ignore"):
        if model == "bgnbd":
            hyp = _hyp2f1_series(rr + x, b + x, a + b + x - 1, z)
            numerator = (a + b + x - 1) / (a - 1) * (1 - hyp * shrink)
            denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + age) / (alpha + rec)) ** (rr + x)
        else:
            hyp = _hyp2f1_series(rr + x, b + x + 1, a + b + x, z)
            numerator = (a + b + x) / (a - 1) * (1 - hyp * shrink)
            denominator = 1 + (a / (b + x)) * ((alpha + age) / (alpha + rec)) ** (rr + x)
    fixed = out.copy()
    fixed[bad] = numerator / denominator
    return fixed


def _discounted(fitter: Any, h: Histories, months: int, rate: float, units_per_month: float) -> Array:
    uf, ur, ut = h.values["frequency"], h.values["recency"], h.values["T"]
    total = np.zeros(len(h))
    previous = np.zeros(len(h))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        for i in range(1, months + 1):
            cum = _conditional_expected(fitter, _model_name(fitter), i * units_per_month, uf, ur, ut)
            total += (cum - previous) / (1.0 + rate) ** i
            previous = cum
    return total


# --- spend model ----------------------------------------------------------------------------------------------


class SpendModel:
    """Gamma-Gamma model of the average spend per purchase, fitted on repeat buyers only.

    Its expectation is finite only for ``q > 1``; a fit with ``q <= 1`` is refitted with lifetimes'
    ``q_constraint``, then up the penalizer ladder.
    """

    def __init__(self, penalizer_ladder: Sequence[float] = (0.0,)) -> None:
        self.penalizer_ladder = penalizer_ladder

    def fit(self, frequency: Any, monetary_value: Any) -> Self:
        """Fit on repeat buyers: ``frequency`` >= 1 and ``monetary_value`` > 0 (the mean repeat spend)."""
        f, m = check_spend(frequency, monetary_value)
        # Spend told apart to 1e-9, as in the bootstrap: a mean spend summed in another order by the engine (a
        # last-bit difference from run to run) would otherwise split a history in two and move the optimiser's
        # path along the flat (p, q, v) ridge, by up to 1e-4 relative at 10M customers.
        h = unique_histories(frequency=f, monetary_value=np.round(m, 9))
        return self.fit_histories(h)

    def fit_histories(self, h: Histories, initial: dict[str, float] | None = None) -> Self:
        ladder = _check_ladder(self.penalizer_ladder)
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
                    _quiet_fit(fitter, f.astype(np.int64), m, weights=w, initial_params=init, q_constraint=constrained)
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
                self.fitter_ = fitter
                self.penalizer_coef_ = pen
                self.attempts_ = attempts
                self.n_customers_ = int(w.sum())
                self.n_histories_ = len(w)
                return self
        raise ClvFitError(
            f"gamma_gamma: the fit did not converge on {int(w.sum())} repeat buyers with penalizer_coef in "
            f"{list(ladder)} ({attempts[-1]['outcome']}); add a larger penalizer_coef to the ladder "
            f"(try {_next_penalizer(ladder)})"
        )

    @property
    def params_(self) -> dict[str, float]:
        if not hasattr(self, "fitter_"):
            raise RuntimeError("this SpendModel is not fitted yet; call fit() first")
        return {n: float(self.fitter_.params_[n]) for n in PARAM_NAMES["gamma_gamma"]}

    def report(self) -> FitReport:
        params = self.params_
        weights = np.asarray(self.fitter_.data["weights"], dtype=np.float64)
        se, iv = _uncertainty(self.fitter_, PARAM_NAMES["gamma_gamma"], float(weights.sum()))
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
            self.params_, _numeric("frequency", frequency), _numeric("monetary_value", monetary_value)
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


# --- bootstrap ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Per-customer CLV percentiles over refits on resampled customers, and the replicate parameters."""

    clv_low: Array
    clv_high: Array
    params: list[dict[str, float]]
    failed: int


# Below this many unique purchase histories a replicate takes milliseconds: worker processes cost more than they save.
PARALLEL_MIN_HISTORIES = 50_000


@dataclasses.dataclass(frozen=True)
class _Replicate:
    discounted: npt.NDArray[np.float32]
    purchase_params: dict[str, float]
    spend_params: dict[str, float]


@dataclasses.dataclass(frozen=True)
class _Refit:
    """One bootstrap replicate's refit of both models from its weights; None when a fit fails (picklable, so a
    worker process can run it)."""

    model: ModelName
    ladder: Sequence[float]
    initial: dict[str, float]
    histories: Histories
    spend_ladder: Sequence[float]
    spend_initial: dict[str, float]
    spend_histories: Histories
    months: int
    discount_rate_monthly: float
    units_per_month: float

    def __call__(self, weight: npt.NDArray[np.int64], spend_weight: npt.NDArray[np.int64]) -> _Replicate | None:
        h = self.histories
        # One BLAS thread, in process or in a worker: a dot product split over threads adds up in another order,
        # and a last-bit difference would let the bands depend on the number of processes.
        with threadpoolctl.threadpool_limits(limits=1):
            return self._refit(weight, spend_weight, h)

    def _refit(
        self, weight: npt.NDArray[np.int64], spend_weight: npt.NDArray[np.int64], h: Histories
    ) -> _Replicate | None:
        try:
            pm = PurchaseModel(self.model, self.ladder).fit_histories(
                dataclasses.replace(h, weight=weight), initial=self.initial
            )
            sm = SpendModel(self.spend_ladder).fit_histories(
                dataclasses.replace(self.spend_histories, weight=spend_weight), initial=self.spend_initial
            )
            dp = _finite(
                _discounted(pm.fitter_, h, self.months, self.discount_rate_monthly, self.units_per_month),
                "discounted purchases",
                pm.model,
                pm.penalizer_coef_,
                self.ladder,
            )
        except ClvFitError:
            return None
        return _Replicate(dp.astype(np.float32), pm.params_, sm.params_)


def bootstrap_clv(
    purchases: PurchaseModel,
    spend: SpendModel,
    frequency: Array,
    recency: Array,
    T: Array,
    monetary_value: Array,
    spend_ok: npt.NDArray[np.bool_],
    *,
    samples: int,
    seed: int,
    months: int,
    discount_rate_monthly: float,
    units_per_month: float,
    margin_ratio: float,
    percentiles: tuple[float, float] = (5.0, 95.0),
    chunk_rows: int = 50_000,
    processes: int = 1,
    on_replicate: Callable[[], None] | None = None,
) -> BootstrapResult:
    """Each customer's CLV percentiles over ``samples`` refits of both models on customers drawn with replacement.

    Drawing the n customers with replacement and counting how often each distinct record (frequency, recency, T,
    monetary value, usable spend) comes up is one multinomial draw over those records, weighted by how many
    customers share each. That is how a replicate is drawn: its cost grows with distinct records, not customers,
    and the result does not depend on the order of the rows. The counts are summed into the weights of the
    unique purchase and spend histories, and both models are refitted on them. Replicates start from the full-data
    estimates and use the remedy the full fit needed; a replicate that still fails is counted in ``failed`` and
    left out. ``spend_ok`` marks the repeat buyers with usable spend (those the spend model was fitted on).
    ``on_replicate`` is called after each replicate (e.g. to show progress). With ``processes`` > 1 (and enough
    histories to pay for them) the replicates are refitted in that many worker processes; the weights are still
    drawn here in order, so the result is the same.
    """
    if samples < 1:
        raise InputError(f"bootstrap samples must be >= 1, got {samples}")
    rng = np.random.default_rng(seed)
    # The records are told apart to 1e-9 in spend: a mean spend summed in another order by the engine (a last-bit
    # difference) must not make a new record, which would shift every later draw of the multinomial.
    records = unique_histories(
        frequency=frequency,
        recency=recency,
        T=T,
        monetary_value=np.round(monetary_value, 9),
        ok=spend_ok.astype(np.float64),
    )
    rf, rr, rt, rm = (records.values[k] for k in ("frequency", "recency", "T", "monetary_value"))
    repeat = np.flatnonzero(records.values["ok"] > 0)
    h = unique_histories(frequency=rf, recency=rr, T=rt)  # h.inverse: record -> purchase history
    hs = unique_histories(frequency=rf[repeat], monetary_value=rm[repeat])  # repeat record -> spend history
    n = records.n_customers
    share = records.weight / n
    ladder = [p for p in purchases.penalizer_ladder if p >= purchases.penalizer_coef_]
    s_ladder = [p for p in spend.penalizer_ladder if p >= spend.penalizer_coef_]
    discounted: list[npt.NDArray[np.float32]] = []
    spend_params: list[dict[str, float]] = []
    reps: list[dict[str, float]] = []
    failed = 0
    refit = _Refit(
        purchases.model, ladder, purchases.params_, h, s_ladder, spend.params_, hs, months,
        discount_rate_monthly, units_per_month,
    )  # fmt: skip

    def replicate_weights() -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
        for _ in range(samples):  # drawn here, in order: the result does not depend on the number of processes
            drawn = rng.multinomial(n, share)
            draw = np.bincount(h.inverse, weights=drawn, minlength=len(h)).astype(np.int64)
            yield draw, np.bincount(hs.inverse, weights=drawn[repeat], minlength=len(hs)).astype(np.int64)

    workers = processes if len(h) >= PARALLEL_MIN_HISTORIES else 1
    if workers > 1:
        runner = joblib.Parallel(n_jobs=workers, backend="loky", return_as="generator")
        results: Iterator[_Replicate | None] = runner(joblib.delayed(refit)(*w) for w in replicate_weights())
    else:
        results = (refit(*w) for w in replicate_weights())
    for result in results:
        if on_replicate is not None:
            on_replicate()
        if result is None:
            failed += 1
            continue
        discounted.append(result.discounted)
        spend_params.append(result.spend_params)
        reps.append({**result.purchase_params, **result.spend_params})
    if len(discounted) < max(2, samples // 2):
        raise ClvFitError(
            f"bootstrap: {failed} of {samples} replicates failed to fit; add a larger penalizer_coef to the ladder "
            f"(try {_next_penalizer(purchases.penalizer_ladder)})"
        )
    dp_all = np.stack(discounted)  # replicates x unique purchase histories
    low = np.empty(len(records))
    high = np.empty(len(records))
    f_spend = np.where(records.values["ok"] > 0, rf, 0.0)
    for start in range(0, len(records), chunk_rows):
        sl = slice(start, min(start + chunk_rows, len(records)))
        aov = np.stack([expected_order_value(sp, f_spend[sl], rm[sl]) for sp in spend_params])
        values = margin_ratio * aov * dp_all[:, h.inverse[sl]]
        low[sl], high[sl] = np.percentile(values, percentiles, axis=0)
    return BootstrapResult(clv_low=low[records.inverse], clv_high=high[records.inverse], params=reps, failed=failed)


# --- scoring --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ValueSettings:
    """How predictions turn into value: horizons in ``base.time_unit`` units, discounting and margin."""

    horizon_units: float
    months: int
    units_per_month: float
    discount_rate_monthly: float
    margin_ratio: float


def usable_spend(frequency: Array, monetary_value: Array) -> npt.NDArray[np.bool_]:
    """Repeat buyers whose mean repeat spend is positive: the customers Gamma-Gamma can learn from.

    A repeat buyer whose returns net their repeat spend to zero or below is scored with the population mean
    spend, like a one-time buyer; the stage counts them.
    """
    return (np.asarray(frequency) > 0) & (np.asarray(monetary_value) > 0)


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
