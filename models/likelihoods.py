"""BG/NBD, MBG/NBD and Gamma-Gamma fits with analytic gradients: lifetimes' objectives, without autograd's cost.

Pure code. lifetimes minimises its negative log-likelihoods with gradients and a Hessian from autograd, which
traces every array operation in Python; on hundreds of thousands of histories that tracing, not the arithmetic,
is most of a fit's time. The fitters here are lifetimes' own (same ``fit``, same time rescaling, same log-
parameters, penalizer, optimiser and convergence test), with only ``_fit`` replaced: the objective's value and
gradient are written out by hand, the terms that depend on a customer's frequency alone are computed once per
distinct frequency, and the Hessian at the optimum comes from central differences of the analytic gradient.

BG/NBD log-likelihood of one customer (Fader, Hardie & Lee 2005a, eq. 6; lifetimes' form, log-sum-exp):

    ll = A1 + A2 + log(exp(A3) + [x > 0] exp(A4))
    A1 = lnG(r + x) - lnG(r) + r ln(alpha)
    A2 = lnG(a + b) + lnG(b + x) - lnG(b) - lnG(a + b + x)
    A3 = -(r + x) ln(alpha + T)
    A4 = ln(a) - ln(b + x - 1) - (r + x) ln(alpha + t_x)

MBG/NBD (Batislam, Denizel & Filiztekin 2007; lifetimes' form), where a customer may drop out at time zero too:

    ll = A1 + A2' + A3 + log(1 + exp(A4'))
    A2' = lnG(a + b) + lnG(b + x + 1) - lnG(b) - lnG(a + b + x + 1)
    A4' = ln(a) - ln(b + x) + (r + x) (ln(alpha + T) - ln(alpha + t_x))

Gamma-Gamma log-likelihood of one repeat buyer's mean spend m over x purchases (Fader, Hardie & Lee 2005b, eq. 1a
of Hardie's note 025):

    ll = lnG(p x + q) - lnG(p x) - lnG(q) + q ln(v) + (p x - 1) ln(m) + p x ln(x) - (p x + q) ln(x m + v)

Both are minimised as lifetimes does: -sum(w ll) / sum(w) + penalizer * sum(params^2), over log-parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from textwrap import dedent
from typing import Any

import numpy as np
import numpy.typing as npt
from lifetimes import BetaGeoFitter, GammaGammaFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
from lifetimes.utils import ConvergenceError
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1, logsumexp

Array = npt.NDArray[np.float64]
Objective = Callable[[Array], tuple[float, Array]]

_HESSIAN_STEP = 1e-5  # in log-parameters: central differences are then exact to ~1e-10 relative


def bgnbd_objective(frequency: Any, recency: Any, T: Any, weights: Any, penalizer_coef: float) -> Objective:
    """Value and gradient (over log r, log alpha, log a, log b) of lifetimes' BG/NBD objective."""
    x = np.asarray(frequency, dtype=np.float64)
    t_x = np.asarray(recency, dtype=np.float64)
    t = np.asarray(T, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    ux, inv = np.unique(x, return_inverse=True)
    wx = np.bincount(inv, weights=w, minlength=len(ux))  # weight per distinct frequency
    repeat = x > 0
    shift = np.maximum(ux, 1.0) - 1.0  # ln(b + max(x, 1) - 1): b + x - 1 for repeat buyers

    def fun(theta: Array) -> tuple[float, Array]:
        params = np.exp(theta)
        r, alpha, a, b = params
        a1 = gammaln(r + ux) - gammaln(r) + r * np.log(alpha)
        a2 = gammaln(a + b) + gammaln(b + ux) - gammaln(b) - gammaln(a + b + ux)
        rx = r + x
        log_at = np.log(alpha + t)
        log_ax = np.log(alpha + t_x)
        a3 = -rx * log_at
        a4 = (np.log(a) - np.log(b + shift))[inv] - rx * log_ax
        top = np.where(repeat, np.maximum(a3, a4), a3)
        e3 = np.exp(a3 - top)
        e4 = np.where(repeat, np.exp(a4 - top), 0.0)
        s = e3 + e4
        pi = e4 / s  # the share of the likelihood from "alive at the last purchase, then dropped out"
        ll = float(wx @ (a1 + a2)) + float(w @ (np.log(s) + top))
        wp = w * pi
        wq = w - wp
        pi_x = np.bincount(inv, weights=wp, minlength=len(ux))
        d_r = wx @ (digamma(r + ux) - digamma(r) + np.log(alpha)) - wq @ log_at - wp @ log_ax
        d_alpha = total * r / alpha - wq @ (rx / (alpha + t)) - wp @ (rx / (alpha + t_x))
        d_a = wx @ (digamma(a + b) - digamma(a + b + ux)) + pi_x.sum() / a
        d_b = wx @ (digamma(a + b) + digamma(b + ux) - digamma(b) - digamma(a + b + ux)) - pi_x @ (1.0 / (b + shift))
        grad_params = -np.array([d_r, d_alpha, d_a, d_b]) / total + 2.0 * penalizer_coef * params
        value = -ll / total + penalizer_coef * float(np.sum(params**2))
        return value, grad_params * params

    return fun


def mbgnbd_objective(frequency: Any, recency: Any, T: Any, weights: Any, penalizer_coef: float) -> Objective:
    """Value and gradient (over log r, log alpha, log a, log b) of lifetimes' MBG/NBD objective."""
    x = np.asarray(frequency, dtype=np.float64)
    t_x = np.asarray(recency, dtype=np.float64)
    t = np.asarray(T, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    ux, inv = np.unique(x, return_inverse=True)
    wx = np.bincount(inv, weights=w, minlength=len(ux))

    def fun(theta: Array) -> tuple[float, Array]:
        params = np.exp(theta)
        r, alpha, a, b = params
        a1 = gammaln(r + ux) - gammaln(r) + r * np.log(alpha)
        a2 = gammaln(a + b) + gammaln(b + ux + 1) - gammaln(b) - gammaln(a + b + ux + 1)
        rx = r + x
        log_at = np.log(alpha + t)
        log_ax = np.log(alpha + t_x)
        a4 = (np.log(a) - np.log(b + ux))[inv] + rx * (log_at - log_ax)
        ll = float(wx @ (a1 + a2)) - float(w @ (rx * log_at)) + float(w @ np.logaddexp(a4, 0.0))
        sig = expit(a4)  # d log(1 + e^A4) / d A4
        ws = w * sig
        sig_x = np.bincount(inv, weights=ws, minlength=len(ux))
        d_r = wx @ (digamma(r + ux) - digamma(r) + np.log(alpha)) - w @ log_at + ws @ (log_at - log_ax)
        d_alpha = total * r / alpha - w @ (rx / (alpha + t)) + ws @ (rx * (1.0 / (alpha + t) - 1.0 / (alpha + t_x)))
        d_a = wx @ (digamma(a + b) - digamma(a + b + ux + 1)) + sig_x.sum() / a
        d_b = wx @ (digamma(a + b) + digamma(b + ux + 1) - digamma(b) - digamma(a + b + ux + 1)) - sig_x @ (
            1.0 / (b + ux)
        )
        grad_params = -np.array([d_r, d_alpha, d_a, d_b]) / total + 2.0 * penalizer_coef * params
        value = -ll / total + penalizer_coef * float(np.sum(params**2))
        return value, grad_params * params

    return fun


def gamma_gamma_objective(frequency: Any, monetary_value: Any, weights: Any, penalizer_coef: float) -> Objective:
    """Value and gradient (over log p, log q, log v) of lifetimes' Gamma-Gamma objective (repeat buyers only)."""
    x = np.asarray(frequency, dtype=np.float64)
    m = np.asarray(monetary_value, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    ux, inv = np.unique(x, return_inverse=True)
    wx = np.bincount(inv, weights=w, minlength=len(ux))
    xm = x * m
    w_x = w * x
    # sums that do not depend on the parameters
    sum_wx_log_m = float(w_x @ np.log(m))
    sum_w_log_m = float(w @ np.log(m))
    sum_wx_log_x = float(w_x @ np.log(x))

    def fun(theta: Array) -> tuple[float, Array]:
        params = np.exp(theta)
        p, q, v = params
        log_xmv = np.log(xm + v)
        inv_xmv = 1.0 / (xm + v)
        s_w_l, s_wx_l = float(w @ log_xmv), float(w_x @ log_xmv)
        s_w_i, s_wx_i = float(w @ inv_xmv), float(w_x @ inv_xmv)
        per_x = gammaln(p * ux + q) - gammaln(p * ux) - gammaln(q)
        ll = (
            float(wx @ per_x)
            + total * q * np.log(v)
            + p * sum_wx_log_m
            - sum_w_log_m
            + p * sum_wx_log_x
            - p * s_wx_l
            - q * s_w_l
        )
        d_p = float((wx * ux) @ (digamma(p * ux + q) - digamma(p * ux))) + sum_wx_log_m + sum_wx_log_x - s_wx_l
        d_q = float(wx @ (digamma(p * ux + q) - digamma(q))) + total * np.log(v) - s_w_l
        d_v = total * q / v - p * s_wx_i - q * s_w_i
        grad_params = -np.array([d_p, d_q, d_v]) / total + 2.0 * penalizer_coef * params
        value = -ll / total + penalizer_coef * float(np.sum(params**2))
        return value, grad_params * params

    return fun


def hessian(fun: Objective, theta: Array, step: float = _HESSIAN_STEP) -> Array:
    """Hessian of the objective at ``theta`` by central differences of its analytic gradient, symmetrised."""
    k = len(theta)
    out = np.empty((k, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = step
        out[:, i] = (fun(theta + e)[1] - fun(theta - e)[1]) / (2.0 * step)
    return np.asarray((out + out.T) / 2.0, dtype=np.float64)


def _minimise(
    fun: Objective, initial_params: Any, params_size: int, disp: bool, tol: float, bounds: Any, **kwargs: Any
) -> tuple[Array, float, Array]:
    """lifetimes' ``BaseFitter._fit`` with an analytic objective: same start, optimiser, tolerance and failure."""
    # With bounds SciPy picks L-BFGS-B, whose `disp` option is deprecated (SciPy 1.15) and prints nothing we read:
    # it is passed only to the unbounded BFGS, and only to turn printing on.
    options = {**({"disp": True} if disp and bounds is None else {}), **kwargs}
    x0 = 0.1 * np.ones(params_size) if initial_params is None else np.asarray(initial_params, dtype=np.float64)
    output = minimize(fun, jac=True, method=None, tol=tol, x0=x0, options=options, bounds=bounds)
    if not output.success:
        raise ConvergenceError(
            dedent(
                """
            The model did not converge. Try adding a larger penalizer to see if that helps convergence.
            """
            )
        )
    return np.asarray(output.x, dtype=np.float64), float(output.fun), hessian(fun, np.asarray(output.x))


class _AnalyticFit:
    """Mixin for a lifetimes fitter: its ``_fit`` minimises ``objective`` (value and gradient) instead of autograd's."""

    objective: Callable[..., Objective]

    def _fit(
        self,
        minimizing_function_args: tuple[Any, ...],
        initial_params: Any,
        params_size: int,
        disp: bool,
        tol: float = 1e-7,
        bounds: Any = None,
        **kwargs: Any,
    ) -> tuple[Array, float, Array]:
        fun = type(self).objective(*minimizing_function_args)
        return _minimise(fun, initial_params, params_size, disp, tol, bounds, **kwargs)


class AnalyticBetaGeoFitter(_AnalyticFit, BetaGeoFitter):
    """lifetimes' ``BetaGeoFitter`` whose fit uses the analytic gradient (identical objective and optimum)."""

    objective = staticmethod(bgnbd_objective)


class AnalyticModifiedBetaGeoFitter(_AnalyticFit, ModifiedBetaGeoFitter):
    """lifetimes' ``ModifiedBetaGeoFitter`` whose fit uses the analytic gradient (identical objective and optimum)."""

    objective = staticmethod(mbgnbd_objective)


class AnalyticGammaGammaFitter(_AnalyticFit, GammaGammaFitter):
    """lifetimes' ``GammaGammaFitter`` whose fit uses the analytic gradient (identical objective and optimum)."""

    objective = staticmethod(gamma_gamma_objective)


def pareto_log_a0(params: Any, frequency: Any, recency: Any, T: Any) -> Array:
    """log A_0 of the Pareto/NBD likelihood (Fader, Hardie & Lee 2005b, eqs. 19-20), guarded where it is the log of
    zero.

    A_0 is a difference of two terms, F(t_x)/(m + t_x)^(r+s+x) - F(T)/(m + T)^(r+s+x) up to a common factor, that is
    never negative (t_x <= T) and is exactly zero when the last purchase falls at T. lifetimes takes the log of that
    difference with a signed log-sum-exp, which gives -inf for a zero, except where the two terms reach e^700 and
    more (hundreds of purchases): there rounding leaves the difference zero or a hair below and the log is not a
    number, which makes the customer's likelihood, P(alive) and expected purchases not numbers, and the whole fit
    fail. A zero or negative difference is the limit zero here: -inf, so the customer is alive with probability one,
    as a customer who bought on the last day is.
    """
    r, alpha, s, beta = params
    x = np.asarray(frequency, dtype=np.float64)
    t_x = np.asarray(recency, dtype=np.float64)
    t = np.asarray(T, dtype=np.float64)
    if alpha < beta:
        low, high, second = alpha, beta, r + x
    else:
        low, high, second = beta, alpha, s + 1.0 + 0.0 * x
    rsx = r + s + x
    at_last, at_end = high + t_x, high + t
    f_last = hyp2f1(rsx, second, rsx + 1.0, (high - low) / at_last)
    f_end = hyp2f1(rsx, second, rsx + 1.0, (high - low) / at_end)
    terms = np.stack([np.log(f_last) + rsx * np.log(at_end), np.log(f_end) + rsx * np.log(at_last)])
    with np.errstate(invalid="ignore", divide="ignore"):
        log_diff, sign = logsumexp(terms, axis=0, b=np.stack([np.ones_like(x), -np.ones_like(x)]), return_sign=True)
    return np.where(sign > 0, log_diff, -np.inf) - rsx * np.log(at_last * at_end)


def pareto_log_likelihood(params: Any, frequency: Any, recency: Any, T: Any) -> Array:
    """Each customer's Pareto/NBD log-likelihood (Fader, Hardie & Lee 2005b, eq. 18), with ``pareto_log_a0``."""
    r, alpha, s, beta = params
    x = np.asarray(frequency, dtype=np.float64)
    t = np.asarray(T, dtype=np.float64)
    head = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    gone = np.log(s) - np.log(r + s + x) + pareto_log_a0(params, x, recency, t)
    return head + np.logaddexp(-(r + x) * np.log(alpha + t) - s * np.log(beta + t), gone)


class StableParetoNBDFitter(ParetoNBDFitter):
    """lifetimes' ``ParetoNBDFitter`` (same objective, optimiser and predictions) with ``pareto_log_a0`` in place of
    its A_0, so a customer with hundreds of purchases, the last at the cutoff, neither breaks the fit nor its
    P(alive). Elsewhere the two agree to the last bit (``tests/test_clv_model.py``)."""

    _log_A_0 = staticmethod(pareto_log_a0)
    _conditional_log_likelihood = staticmethod(pareto_log_likelihood)

    @staticmethod
    def _negative_log_likelihood(
        params: Any, freq: Any, rec: Any, T: Any, weights: Any, penalizer_coef: float
    ) -> float:
        values = np.asarray(params, dtype=np.float64)
        if np.any(values <= 0.0):
            return float("inf")
        ll = pareto_log_likelihood(values, freq, rec, T)
        return float(-(weights * ll).sum() / weights.mean() + penalizer_coef * np.sum(values**2))
