"""Paired bootstrap intervals: each metric on row counts equals the metric on the resampled rows, and the interval
covers a known gain as often as it says."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from models import paired
from models.evaluation import churn_metrics, holdout_metrics


def churn_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two scores with ties (rounded), the second a noisier copy of the first."""
    y = (rng.random(n) < 0.35).astype(np.float64)
    first = np.round(y * 0.8 + rng.normal(size=n), 1)
    return y, first, np.round(first + rng.normal(size=n), 1)


def value_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Holdout purchases and spend (many zeros, ties) and a model's predictions of them."""
    purchases = rng.poisson(rng.gamma(0.5, 2.0, size=n)).astype(np.float64)
    spend = np.round(purchases * rng.gamma(3.0, 10.0, size=n), 0)
    expected = np.round(purchases * 0.6 + rng.gamma(0.5, 1.0, size=n), 2)
    expected_spend = expected * 25.0
    return purchases, spend, expected, expected_spend, np.round(expected_spend * rng.uniform(0.5, 1.5, size=n), 0)


def drawn_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One bootstrap draw as row indices (sorted: tied scores then keep the rows' order, as the kernels do) and as
    counts per row."""
    idx = np.sort(rng.integers(0, n, size=n))
    return idx, np.bincount(idx, minlength=n).astype(np.float64)[None, :]


CHURN = ("roc_auc", "pr_auc", "top_decile_lift")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_churn_metric_on_counts_is_the_metric_of_the_resampled_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, score, _ = churn_rows(rng, 997)
    idx, counts = drawn_rows(rng, len(y))
    expected = churn_metrics(y[idx], score[idx], None, 50)
    for metric in CHURN:
        got = paired.metric_kernel(metric, y, score)(counts)[0]
        assert got == pytest.approx(expected[metric], rel=1e-12), metric


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_value_metric_on_counts_is_the_metric_of_the_resampled_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    purchases, spend, expected, expected_spend, value = value_rows(rng, 1003)
    idx, counts = drawn_rows(rng, len(purchases))
    want = holdout_metrics(expected[idx], purchases[idx], expected_spend[idx], spend[idx], value[idx])
    inputs = {
        "purchases_mae": (purchases, expected),
        "purchases_rmse": (purchases, expected),
        "purchases_abs_pct_error": (purchases, expected),
        "spend_mae": (spend, expected_spend),
        "spearman": (spend, value),
        "gini": (spend, value),
        "top_decile_capture": (spend, value),
    }
    assert set(inputs) | set(CHURN) == set(paired.KERNELS)
    for metric, (truth, prediction) in inputs.items():
        got = paired.metric_kernel(metric, truth, prediction)(counts)[0]
        assert got == pytest.approx(want[metric], rel=1e-10), metric


def test_the_gain_is_signed_so_that_better_is_positive_for_errors_too() -> None:
    rng = np.random.default_rng(5)
    purchases, _, expected, _, _ = value_rows(rng, 2000)
    worse = expected + rng.normal(0, 1.0, size=len(expected))
    result = paired.paired_gain("purchases_rmse", purchases, expected, worse, resamples=400, seed=1)
    assert result.candidate < result.reference and result.gain == pytest.approx(result.reference - result.candidate)
    assert 0 < result.low < result.gain < result.high
    swapped = paired.paired_gain("purchases_rmse", purchases, worse, expected, resamples=400, seed=1)
    assert (swapped.gain, swapped.low, swapped.high) == pytest.approx((-result.gain, -result.high, -result.low))


def test_identical_predictions_gain_exactly_nothing() -> None:
    rng = np.random.default_rng(6)
    y, score, _ = churn_rows(rng, 1500)
    result = paired.paired_gain("roc_auc", y, score, score.copy(), resamples=200, seed=2)
    assert (result.gain, result.low, result.high) == (0.0, 0.0, 0.0)


def test_a_row_cap_draws_the_same_rows_for_both_and_widens_the_interval() -> None:
    rng = np.random.default_rng(7)
    y, a, b = churn_rows(rng, 20_000)
    full = paired.paired_gain("roc_auc", y, a, b, resamples=500, seed=3)
    capped = paired.paired_gain("roc_auc", y, a, b, resamples=500, seed=3, max_rows=4000)
    assert (capped.rows, capped.total_rows, full.rows) == (4000, 20_000, 20_000)
    assert capped.gain == full.gain  # point figures use every row
    assert capped.high - capped.low > 1.5 * (full.high - full.low)  # a fifth of the rows: about sqrt(5) wider
    assert "4,000 rows drawn from 20,000" in capped.words()


def test_bad_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="no paired interval for metric 'accuracy'"):
        paired.paired_gain("accuracy", [0, 1], [0.1, 0.2], [0.2, 0.1])
    with pytest.raises(ValueError, match="same rows; got 2, 2, 3"):
        paired.paired_gain("roc_auc", [0, 1], [0.1, 0.2], [0.2, 0.1, 0.3])
    with pytest.raises(ValueError, match="the candidate holds 1 non-finite"):
        paired.paired_gain("roc_auc", [0, 1], [np.nan, 0.2], [0.2, 0.1])


def simulated_gain(rng: np.random.Generator, n: int, shift_a: float, shift_b: float) -> tuple[np.ndarray, ...]:
    """Churn labels and two scores whose population ROC-AUCs are known: a score is ``shift * y`` plus unit-variance
    normal noise (shared in part by both scores, as two models of one log are), so its AUC is Phi(shift / sqrt 2)."""
    y = (rng.random(n) < 0.3).astype(np.float64)
    shared = rng.normal(size=n) * np.sqrt(0.6)
    a = shift_a * y + shared + rng.normal(size=n) * np.sqrt(0.4)
    b = shift_b * y + shared + rng.normal(size=n) * np.sqrt(0.4)
    return y, a, b


def true_auc(shift: float) -> float:
    return float(norm.cdf(shift / np.sqrt(2.0)))


@pytest.mark.slow
def test_the_interval_covers_the_true_gain_as_often_as_its_level() -> None:
    """200 simulated holdouts of 2,000 customers with a true ROC-AUC gain of 0.0147: the 90% interval holds it in
    about 90% of them (binomial sd 2.1 points)."""
    truth = true_auc(1.2) - true_auc(1.1)
    rng = np.random.default_rng(2026)
    covered = 0
    for rep in range(200):
        y, a, b = simulated_gain(rng, 2000, 1.2, 1.1)
        result = paired.paired_gain("roc_auc", y, a, b, resamples=400, level=0.90, seed=rep)
        covered += result.low <= truth <= result.high
    assert 0.85 <= covered / 200 <= 0.95, covered


def test_clusters_resample_whole_customers() -> None:
    """The same 1,000 customers at three cutoffs, scored alike each time: resampling rows would count each
    customer's three rows as independent evidence; resampling customers gives the interval of 1,000 customers."""
    rng = np.random.default_rng(8)
    y, a, b = churn_rows(rng, 1000)
    one = paired.paired_gain("roc_auc", y, a, b, resamples=600, seed=1)
    tripled = [np.tile(v, 3) for v in (y, a, b)]
    rows = paired.paired_gain("roc_auc", *tripled, resamples=600, seed=1)
    customers = paired.paired_gain("roc_auc", *tripled, resamples=600, seed=1, clusters=np.tile(np.arange(1000), 3))
    width = {k: r.high - r.low for k, r in {"one": one, "rows": rows, "customers": customers}.items()}
    assert customers.gain == pytest.approx(one.gain, abs=1e-12)
    assert width["rows"] < 0.75 * width["one"]  # about 1 / sqrt 3: evidence that is not there
    assert width["customers"] == pytest.approx(width["one"], rel=0.2)
    with pytest.raises(ValueError, match="2 cluster labels for 3 rows"):
        paired.paired_gain("roc_auc", [0, 1, 1], [0.1, 0.2, 0.3], [0.2, 0.1, 0.3], clusters=[1, 2])


def test_strata_never_rank_rows_of_different_origins_against_each_other() -> None:
    """Two origins (churn rates 0.3 and 0.7) where model and rule rank alike, the model's scores shifted up at the
    second: no origin shows a gain, and neither does the stratified one, while pooling the rows invents one."""
    rng = np.random.default_rng(9)
    y = np.r_[(rng.random(2000) < 0.3), (rng.random(2000) < 0.7)].astype(np.float64)
    rule = y * 0.8 + rng.normal(size=4000)
    model = rule + np.r_[np.zeros(2000), np.full(2000, 2.0)]
    origin = np.repeat([0, 1], 2000)
    pooled = paired.paired_gain("roc_auc", y, model, rule, resamples=300, seed=1)
    assert pooled.low > 0.03  # the shift alone, read as skill
    stratified = paired.paired_gain("roc_auc", y, model, rule, resamples=300, seed=1, strata=origin)
    assert (stratified.gain, stratified.low, stratified.high) == (0.0, 0.0, 0.0)
    # the stratified gain is each origin's gain weighted by its rows
    weak = np.r_[rule[:2000], rng.normal(size=2000)]
    result = paired.paired_gain("roc_auc", y, rule, weak, resamples=300, seed=1, strata=origin)
    second = paired.paired_gain("roc_auc", y[2000:], rule[2000:], weak[2000:], resamples=300, seed=1)
    assert result.gain == pytest.approx(second.gain / 2, abs=1e-12)


def test_a_capped_interval_is_centred_on_the_gain_of_all_rows() -> None:
    rng = np.random.default_rng(10)
    for seed in range(5):
        y, a, b = churn_rows(rng, 12_000)
        capped = paired.paired_gain("roc_auc", y, a, b, resamples=300, seed=seed, max_rows=1500)
        middle = (capped.low + capped.high) / 2
        assert abs(middle - capped.gain) < 0.25 * (capped.high - capped.low)
