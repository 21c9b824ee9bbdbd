"""The bootstrap: both models refitted on customers drawn with replacement, for each customer's CLV band."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import joblib
import numpy as np
import numpy.typing as npt
import threadpoolctl

from features.errors import InputError
from models.clv_base import Array, ClvFitError, ModelName, next_penalizer
from models.histories import Histories, unique_histories
from models.purchases import PurchaseModel
from models.spend import SpendModel, expected_order_value


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
            dp = pm.discounted_purchases_histories(
                h,
                months=self.months,
                discount_rate_monthly=self.discount_rate_monthly,
                units_per_month=self.units_per_month,
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
            f"(try {next_penalizer(purchases.penalizer_ladder)})"
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
