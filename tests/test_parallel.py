"""pipeline/parallel.py: worker processes change no replicate of the bootstrap, and start only where they pay."""

from __future__ import annotations

import numpy as np
import pytest

from models.bootstrap import clv_band, refit_replicates
from models.purchases import PurchaseModel
from models.spend import SpendModel, usable_spend
from pipeline.parallel import PARALLEL_MIN_HISTORIES, process_map

NO_REMEDY = (0.0,)
BAND = dict(months=12, discount_rate_monthly=0.01, units_per_month=4.348, margin_ratio=0.3)


def _log(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` customers with Poisson repeat purchases over 30-540 days (in weeks) and gamma spend in cents."""
    rng = np.random.default_rng(seed)
    t = rng.integers(30, 540, n) / 7.0
    f = rng.poisson(1.5, n).astype(float)
    r = np.where(f > 0, np.floor(rng.uniform(0, 1, n) * t * 7) / 7.0, 0.0)
    m = np.where(f > 0, np.round(rng.gamma(6.0, 5.0, n), 2), 0.0)
    return f, r, t, m


def test_one_process_or_few_histories_is_plain_map() -> None:
    assert process_map(1, 10**9) is map
    assert process_map(4, PARALLEL_MIN_HISTORIES - 1) is map
    assert process_map(4, 10, min_histories=5) is not map
    with pytest.raises(ValueError, match="processes must be >= 1, got 0"):
        process_map(0, 10)


def test_process_map_keeps_the_order_of_the_inputs() -> None:
    squares = process_map(2, 1, min_histories=0)(abs, range(-20, 0))
    assert list(squares) == list(range(20, 0, -1))


def test_replicates_are_the_same_with_map_and_two_worker_processes() -> None:
    """Forced past the size where processes start (min_histories=0): the weights are drawn in order in this
    process, so two workers refit exactly the replicates ``map`` does."""
    f, r, t, m = _log(3000, seed=4)
    purchases = PurchaseModel("bgnbd", NO_REMEDY).fit(f, r, t)
    ok = usable_spend(f, m)
    spend = SpendModel(NO_REMEDY).fit(f[ok], m[ok])
    ticks: list[None] = []
    plain = refit_replicates(purchases, spend, f, r, t, m, ok, samples=6, seed=9)
    workers = process_map(2, purchases.n_histories_, min_histories=0)
    par = refit_replicates(
        purchases, spend, f, r, t, m, ok, samples=6, seed=9, map_fn=workers, on_replicate=lambda: ticks.append(None)
    )
    assert par == plain and par.failed == 0 and len(par.params) == 6 and len(ticks) == 6


def test_worker_processes_match_one_process_past_the_size_they_start_at() -> None:
    """Past PARALLEL_MIN_HISTORIES the sums are long enough for BLAS to split them over threads: the refits run
    single-threaded everywhere, so two worker processes give the very replicates, and bands, one process gives."""
    f, r, t, m = _log(90_000, seed=3)
    purchases = PurchaseModel("bgnbd", NO_REMEDY).fit(f, r, t)
    assert purchases.n_histories_ > PARALLEL_MIN_HISTORIES
    ok = usable_spend(f, m)
    spend = SpendModel(NO_REMEDY).fit(f[ok], m[ok])
    one = refit_replicates(purchases, spend, f, r, t, m, ok, samples=4, seed=11, map_fn=process_map(1, len(f)))
    workers = process_map(2, purchases.n_histories_)
    assert workers is not map
    two = refit_replicates(purchases, spend, f, r, t, m, ok, samples=4, seed=11, map_fn=workers)
    assert one == two and one.failed == 0
    np.testing.assert_array_equal(clv_band(one, f, r, t, m, **BAND)[1], clv_band(two, f, r, t, m, **BAND)[1])
