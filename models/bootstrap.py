"""The bootstrap: both models refitted on customers drawn with replacement, and each customer's CLV band from them.

Two steps, so that training and scoring can be separate stages: ``refit_replicates`` refits the purchase and spend
models on resampled customers and keeps each replicate's parameters (``Replicates``, plain floats that go to JSON
and back exactly); ``clv_band`` evaluates every stored replicate on the histories of any customers, those the
replicates were fitted on or a later scoring snapshot of them, and returns each customer's CLV percentiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import threadpoolctl

from features.errors import InputError
from models.clv_base import (
    MODEL_NAMES,
    PARAM_NAMES,
    Array,
    ClvFitError,
    ModelName,
    check_histories,
    float_column,
    next_penalizer,
)
from models.histories import Histories, unique_histories
from models.purchases import PurchaseModel, purchase_model_from_params
from models.spend import SpendModel, expected_order_value, usable_spend

# What ``refit_replicates`` runs its refits with: ``map`` itself, or one over worker processes that returns the
# results in the order of the inputs (``pipeline.parallel.process_map``). Pure code never starts processes.
MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


# --- replicates -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReplicateParams:
    """One bootstrap replicate's fitted parameters: the purchase model's and Gamma-Gamma's."""

    purchases: dict[str, float]
    spend: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Replicates:
    """The replicates that fitted, in the order they were drawn, the purchase model they are of, and how many failed.

    Parameters only, no customers: a band can be computed from them on any customers' histories (``clv_band``),
    and they are stored with the models (``to_dict``; ``from_dict`` reads them back, checking every field).
    """

    model: ModelName
    params: tuple[ReplicateParams, ...]
    failed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, dicts and floats: ``json.dumps`` writes each float so that it reads back to the same bits."""
        return {
            "model": self.model,
            "failed": self.failed,
            "params": [{"purchases": dict(p.purchases), "spend": dict(p.spend)} for p in self.params],
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Self:
        """The replicates ``to_dict`` wrote; a missing or unknown field, or a non-finite parameter, is an error."""
        unknown = sorted(set(doc) - {"model", "failed", "params"})
        missing = sorted({"model", "failed", "params"} - set(doc))
        if unknown or missing:
            raise InputError(f"bootstrap replicates: unknown fields {unknown}, missing fields {missing}")
        model = doc["model"]
        if model not in MODEL_NAMES:
            raise InputError(f"bootstrap replicates: model must be one of {', '.join(MODEL_NAMES)}; got {model!r}")
        failed = doc["failed"]
        if isinstance(failed, bool) or not isinstance(failed, int) or failed < 0:
            raise InputError(f"bootstrap replicates: failed must be a count >= 0; got {failed!r}")
        params = tuple(
            ReplicateParams(
                purchases=_stored_params(rep, "purchases", model, i),
                spend=_stored_params(rep, "spend", "gamma_gamma", i),
            )
            for i, rep in enumerate(doc["params"])
        )
        return cls(model=model, params=params, failed=failed)


def _stored_params(rep: dict[str, Any], key: str, model: str, i: int) -> dict[str, float]:
    """Replicate ``i``'s ``key`` parameters: exactly ``model``'s names, each a finite number, as floats."""
    values = rep.get(key) if isinstance(rep, dict) else None
    names = PARAM_NAMES[model]
    if not isinstance(values, dict) or sorted(values) != sorted(names):
        raise InputError(f"bootstrap replicates: params[{i}].{key} must hold {list(names)}; got {values!r}")
    bad = {
        n: v for n, v in values.items() if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
    }
    if bad:
        raise InputError(f"bootstrap replicates: params[{i}].{key} has non-finite or non-numeric values {bad}")
    return {n: float(values[n]) for n in names}


# --- refitting ------------------------------------------------------------------------------------------------


def _records(
    frequency: Array, recency: Array, T: Array, monetary_value: Array, spend_ok: npt.NDArray[np.bool_]
) -> tuple[Histories, Histories]:
    """The customers' distinct records, and the records' distinct purchase histories (``inverse``: record -> one).

    A record is (frequency, recency, T, monetary value, usable spend): customers who share one are interchangeable
    in a refit and get the same band, so both steps work per record and the cost grows with records, not customers.
    Records come sorted by value, so nothing depends on the order of the rows.
    """
    # Spend is told apart to the bit: the features stage sums money exactly (decimals) and divides once, so a
    # customer's mean spend no longer depends on the order the engine adds in, and no rounding is needed to keep
    # the records (and so every draw of the multinomial) the same from run to run.
    records = unique_histories(
        frequency=frequency, recency=recency, T=T, monetary_value=monetary_value, ok=spend_ok.astype(np.float64)
    )
    rv = records.values
    return records, unique_histories(frequency=rv["frequency"], recency=rv["recency"], T=rv["T"])


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

    def __call__(self, weights: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]) -> ReplicateParams | None:
        # One BLAS thread, in process or in a worker: a dot product split over threads adds up in another order,
        # and a last-bit difference would let the replicates depend on the number of processes.
        with threadpoolctl.threadpool_limits(limits=1):
            return self._refit(*weights)

    def _refit(self, weight: npt.NDArray[np.int64], spend_weight: npt.NDArray[np.int64]) -> ReplicateParams | None:
        try:
            pm = PurchaseModel(self.model, self.ladder).fit_histories(
                dataclasses.replace(self.histories, weight=weight), initial=self.initial
            )
            sm = SpendModel(self.spend_ladder).fit_histories(
                dataclasses.replace(self.spend_histories, weight=spend_weight), initial=self.spend_initial
            )
        except ClvFitError:
            return None
        return ReplicateParams(purchases=pm.params_, spend=sm.params_)


def refit_replicates(
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
    map_fn: MapFn = map,
    on_replicate: Callable[[], None] | None = None,
) -> Replicates:
    """Both models refitted ``samples`` times on the customers drawn with replacement; the parameters of each.

    Drawing the n customers with replacement and counting how often each distinct record (see ``_records``) comes
    up is one multinomial draw over those records, weighted by how many customers share each. That is how a
    replicate is drawn: its cost grows with distinct records, not customers, and the result does not depend on
    the order of the rows. The counts are summed into the weights of the unique purchase and spend histories, and
    both models are refitted on them. Replicates start from the full-data estimates and use the remedy the full
    fit needed; a replicate that still fails is counted in ``failed`` and left out. ``spend_ok`` marks the repeat
    buyers with usable spend (those ``spend`` was fitted on).

    The refits run through ``map_fn`` (``map``, or a map over worker processes: ``pipeline.parallel``); the
    weights are drawn here, in order, and each refit runs on one BLAS thread, so the replicates are the same
    whichever map runs them. ``on_replicate`` is called after each replicate (e.g. to show progress). Raises
    ``ClvFitError`` when fewer than max(2, ``samples`` // 2) replicates fit.
    """
    if samples < 1:
        raise InputError(f"bootstrap samples must be >= 1, got {samples}")
    records, h = _records(frequency, recency, T, monetary_value, spend_ok)
    repeat = np.flatnonzero(records.values["ok"] > 0)
    hs = unique_histories(  # repeat record -> spend history
        frequency=records.values["frequency"][repeat], monetary_value=records.values["monetary_value"][repeat]
    )
    refit = _Refit(
        model=purchases.model,
        ladder=[p for p in purchases.penalizer_ladder if p >= purchases.penalizer_coef_],
        initial=purchases.params_,
        histories=h,
        spend_ladder=[p for p in spend.penalizer_ladder if p >= spend.penalizer_coef_],
        spend_initial=spend.params_,
        spend_histories=hs,
    )
    rng = np.random.default_rng(seed)
    n = records.n_customers
    share = records.weight / n

    def replicate_weights() -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
        for _ in range(samples):  # drawn here, in order: the result does not depend on the map
            drawn = rng.multinomial(n, share)
            draw = np.bincount(h.inverse, weights=drawn, minlength=len(h)).astype(np.int64)
            yield draw, np.bincount(hs.inverse, weights=drawn[repeat], minlength=len(hs)).astype(np.int64)

    fitted: list[ReplicateParams] = []
    failed = 0
    for result in map_fn(refit, replicate_weights()):
        if on_replicate is not None:
            on_replicate()
        if result is None:
            failed += 1
        else:
            fitted.append(result)
    if len(fitted) < max(2, samples // 2):
        raise ClvFitError(
            f"bootstrap: {failed} of {samples} replicates failed to fit; add a larger penalizer_coef to the ladder "
            f"(try {next_penalizer(purchases.penalizer_ladder)})"
        )
    return Replicates(model=purchases.model, params=tuple(fitted), failed=failed)


# --- the band -------------------------------------------------------------------------------------------------


def clv_band(
    replicates: Replicates,
    frequency: Any,
    recency: Any,
    T: Any,
    monetary_value: Any,
    *,
    months: int,
    discount_rate_monthly: float,
    units_per_month: float,
    margin_ratio: float,
    percentiles: tuple[float, float] = (5.0, 95.0),
    chunk_rows: int = 50_000,
) -> tuple[Array, Array]:
    """Each customer's CLV percentiles over the replicates: (low, high), one value per customer in row order.

    Every replicate's stored parameters are evaluated on these customers' histories, as ``score`` evaluates the
    point estimate: discounted expected purchases over ``months`` times the expected order value times
    ``margin_ratio``. The customers need not be those the replicates were fitted on (a model fitted as of a
    training date, its band on a later scoring snapshot). Values are computed per distinct record and
    ``chunk_rows`` records at a time, so memory holds replicates x distinct purchase histories (as float32, half
    the size at a relative error of 6e-8, far inside any band) and replicates x ``chunk_rows``.
    A replicate whose prediction overflows on these histories raises ``ClvFitError``, naming it.
    """
    if not replicates.params:
        raise InputError("bootstrap replicates: none to evaluate; refit with more bootstrap samples")
    f, r, t = check_histories(frequency, recency, T)
    m = float_column("monetary_value", monetary_value)
    if len(m) != len(f):
        raise InputError(f"frequency, monetary_value: lengths differ ({len(f)} and {len(m)})")
    records, h = _records(f, r, t, m, usable_spend(f, m))
    discounted = np.empty((len(replicates.params), len(h)), dtype=np.float32)
    for i, rep in enumerate(replicates.params):
        model = purchase_model_from_params(replicates.model, rep.purchases)
        try:
            discounted[i] = model.discounted_purchases_histories(
                h, months=months, discount_rate_monthly=discount_rate_monthly, units_per_month=units_per_month
            )
        except ClvFitError as exc:
            raise ClvFitError(f"bootstrap replicate {i} of {len(replicates.params)}: {exc}") from exc
    rv = records.values
    f_spend = np.where(rv["ok"] > 0, rv["frequency"], 0.0)  # no usable spend: the population mean, as ``score``
    low = np.empty(len(records))
    high = np.empty(len(records))
    for start in range(0, len(records), chunk_rows):
        sl = slice(start, min(start + chunk_rows, len(records)))
        aov = np.stack(
            [expected_order_value(rep.spend, f_spend[sl], rv["monetary_value"][sl]) for rep in replicates.params]
        )
        values = margin_ratio * aov * discounted[:, h.inverse[sl]]
        low[sl], high[sl] = np.percentile(values, percentiles, axis=0)
    return low[records.inverse], high[records.inverse]
