"""The analytic BG/NBD and Gamma-Gamma objectives equal lifetimes' own (autograd), value and gradient."""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import pytest
from autograd import value_and_grad
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter

from models import likelihoods as lk


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    """lifetimes' CDNOW sample summary (2,357 customers, weeks), with seeded integer weights and spends."""
    frame = pd.read_csv(resources.files("lifetimes") / "datasets" / "cdnow_customers_summary.csv")
    rng = np.random.default_rng(7)
    return frame.assign(weight=rng.integers(1, 5, len(frame)).astype(float), spend=rng.gamma(6.0, 6.0, len(frame)))


@pytest.mark.parametrize("penalizer", [0.0, 0.05])
@pytest.mark.parametrize(
    ("objective", "fitter"),
    [(lk.bgnbd_objective, BetaGeoFitter), (lk.mbgnbd_objective, ModifiedBetaGeoFitter)],
    ids=["bgnbd", "mbgnbd"],
)
def test_purchase_objectives_and_gradients_equal_lifetimes(
    cdnow: pd.DataFrame, penalizer: float, objective: Any, fitter: Any
) -> None:
    scale = 1.0 / cdnow["T"].max()  # lifetimes fits on time rescaled to max(T) = 1
    f, r, t, w = (cdnow[c].to_numpy(float) for c in ("frequency", "recency", "T", "weight"))
    args = (f, r * scale, t * scale, w, penalizer)
    ours = objective(*args)
    rng = np.random.default_rng(1)
    for _ in range(5):
        theta = np.log([0.24, 4.4 * scale, 0.79, 2.43]) + rng.normal(0, 0.5, 4)
        value, grad = value_and_grad(fitter._negative_log_likelihood)(theta, *args)
        v, g = ours(theta)
        assert v == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(g, grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("penalizer", [0.0, 0.05])
def test_gamma_gamma_objective_and_gradient_equal_lifetimes(cdnow: pd.DataFrame, penalizer: float) -> None:
    repeat = cdnow[cdnow["frequency"] > 0]
    args = (repeat["frequency"].to_numpy(float), repeat["spend"].to_numpy(), repeat["weight"].to_numpy(), penalizer)
    ours = lk.gamma_gamma_objective(*args)
    rng = np.random.default_rng(2)
    for _ in range(5):
        theta = np.log([6.25, 3.74, 15.44]) + rng.normal(0, 0.5, 3)
        value, grad = value_and_grad(GammaGammaFitter._negative_log_likelihood)(theta, *args)
        v, g = ours(theta)
        assert v == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(g, grad, rtol=1e-9, atol=1e-12)


def test_fits_and_standard_errors_equal_lifetimes(cdnow: pd.DataFrame) -> None:
    f, r, t, w = (cdnow[c].to_numpy() for c in ("frequency", "recency", "T", "weight"))
    for plain, analytic in (
        (BetaGeoFitter, lk.AnalyticBetaGeoFitter),
        (ModifiedBetaGeoFitter, lk.AnalyticModifiedBetaGeoFitter),
    ):
        theirs = plain().fit(f, r, t, weights=w)
        ours = analytic().fit(f, r, t, weights=w)
        np.testing.assert_allclose(ours.params_.to_numpy(), theirs.params_.to_numpy(), rtol=1e-7)
        np.testing.assert_allclose(ours.standard_errors_.to_numpy(), theirs.standard_errors_.to_numpy(), rtol=1e-5)
        assert ours._negative_log_likelihood_ == pytest.approx(theirs._negative_log_likelihood_, rel=1e-12)
    repeat = f > 0
    m = cdnow["spend"].to_numpy()
    theirs_gg = GammaGammaFitter().fit(f[repeat], m[repeat], weights=w[repeat])
    ours_gg = lk.AnalyticGammaGammaFitter().fit(f[repeat], m[repeat], weights=w[repeat])
    np.testing.assert_allclose(ours_gg.params_.to_numpy(), theirs_gg.params_.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(ours_gg.standard_errors_.to_numpy(), theirs_gg.standard_errors_.to_numpy(), rtol=1e-5)


def test_a_failed_fit_raises_lifetimes_error() -> None:
    # one customer, no repeat purchase: the likelihood has no interior optimum and BFGS cannot finish
    with pytest.raises(lk.ConvergenceError, match="did not converge"):
        lk.AnalyticBetaGeoFitter().fit(np.zeros(3), np.zeros(3), np.ones(3), maxiter=1)
