"""What the CLV modules share: model names and their parameters, the fit error, input checks, the fit report.

Everything here depends on nothing else in ``models``, so the purchase, spend, bootstrap and value modules can
all import it without opening an import circle. The wrapper's promises hold across them:

- inputs are validated *before* any cast (a frequency of 1.5 is rejected, not truncated), with errors that name
  the column, the count and an example;
- a fit that does not converge, or whose parameters or predictions overflow, is retried up a ladder of
  ``penalizer_coef`` values, and every attempt is recorded; when all fail, ``ClvFitError`` names the next
  ``penalizer_coef`` to try. No NaN or infinite value is ever returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

from features.errors import InputError

ModelName = Literal["bgnbd", "mbgnbd", "pareto_nbd"]
MODEL_NAMES: tuple[ModelName, ...] = ("bgnbd", "mbgnbd", "pareto_nbd")
PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "bgnbd": ("r", "alpha", "a", "b"),
    "mbgnbd": ("r", "alpha", "a", "b"),
    "pareto_nbd": ("r", "alpha", "s", "beta"),
    "gamma_gamma": ("p", "q", "v"),
}
# Mean month in days (365.25 / 12); CLV sums expected purchases month by month.
DAYS_PER_MONTH = 365.25 / 12
_Z90 = 1.6448536269514722  # standard normal 95th percentile: a two-sided 90% interval
Array = npt.NDArray[np.float64]


class ClvFitError(InputError):
    """A model could not be fitted, or it produced a non-finite value, even after every remedy."""


# Fewer customers than this cannot pin down a model's 3-4 heterogeneity parameters: the fit may "converge" to a
# corner and every downstream ranking metric is undefined. Refuse instead of returning a meaningless model.
MIN_CUSTOMERS_TO_FIT = 20


# --- validation -----------------------------------------------------------------------------------------------


def float_column(name: str, values: Any) -> Array:
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
    cols = {"frequency": float_column("frequency", frequency), "recency": float_column("recency", recency)}
    cols["T"] = float_column("T", T)
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
    f = float_column("frequency", frequency)
    m = float_column("monetary_value", monetary_value)
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


# --- fitted parameters ----------------------------------------------------------------------------------------


# Which way each holdout metric of a CLV model is better (model selection and the registry gate read these).
LOWER_IS_BETTER = ("purchases_abs_pct_error", "purchases_mae", "purchases_rmse", "spend_mae")
HIGHER_IS_BETTER = ("spearman", "gini", "top_decile_capture")


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


def fit_uncertainty(
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


def quiet_fit(fitter: Any, *args: Any, **kwargs: Any) -> Any:
    """Fit without lifetimes' prints (it prints the optimiser state on failure) and its overflow warnings."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return fitter.fit(*args, **kwargs)


# --- the penalizer ladder -------------------------------------------------------------------------------------


class LadderFitted:
    """The learned state a fit up the penalizer ladder leaves: shared by the purchase and the spend model."""

    fitter_: Any
    penalizer_coef_: float
    attempts_: list[dict[str, Any]]
    n_customers_: int
    n_histories_: int

    def _converged(
        self, fitter: Any, penalizer: float, attempts: list[dict[str, Any]], weight: npt.NDArray[np.int64]
    ) -> Self:
        """Keep the converged ``fitter``, its rung, every attempt up to it and how many customers and histories."""
        self.fitter_ = fitter
        self.penalizer_coef_ = penalizer
        self.attempts_ = attempts
        self.n_customers_ = int(weight.sum())
        self.n_histories_ = len(weight)
        return self


def next_penalizer(ladder: Sequence[float]) -> float:
    """The ``penalizer_coef`` an error message suggests once every rung of ``ladder`` has failed."""
    top = max(ladder)
    return 0.001 if top == 0 else top * 10


def check_ladder(ladder: Sequence[float]) -> tuple[float, ...]:
    """``ladder`` as floats, refused unless it is increasing, finite and >= 0 (a fit climbs it in order)."""
    if not ladder or any(p < 0 or not np.isfinite(p) for p in ladder) or list(ladder) != sorted(ladder):
        raise InputError(f"penalizer_ladder must be increasing values >= 0, got {list(ladder)}")
    return tuple(float(p) for p in ladder)


def ladder_exhausted(what: str, ladder: Sequence[float], attempts: list[dict[str, Any]]) -> ClvFitError:
    """The error for a fit that failed on every rung of ``ladder``: ``what`` failed, how it last failed (from
    ``attempts``) and the ``penalizer_coef`` to add, so the user knows the next step."""
    return ClvFitError(
        f"{what} with penalizer_coef in {list(ladder)} ({attempts[-1]['outcome']}); add a larger penalizer_coef "
        f"to the ladder (try {next_penalizer(ladder)})"
    )


def require_finite(x: Array, what: str, model: str, penalizer: float, ladder: Sequence[float]) -> Array:
    """``x`` unchanged if every value is finite; otherwise a ``ClvFitError`` naming the penalizer to try next."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise ClvFitError(
            f"{model}: {int(bad.sum())} non-finite {what} with penalizer_coef={penalizer}; refit with a larger "
            f"penalizer_coef (try {next_penalizer(ladder)})"
        )
    return x
