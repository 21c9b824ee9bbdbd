"""Paired evidence: is one prediction better than another on the same rows by more than the rows' noise?

Pure code. ``paired_gain`` draws bootstrap resamples of the rows (customers), one draw shared by both predictions,
and reads the metric of each prediction on every resample. The percentile interval of the difference (turned so
that a positive gain means the candidate is better) is what the champion gate needs: a challenger that wins on one
holdout by less than its own noise has not shown it is better.

A resample is a count per row (how often the draw took it). Every metric here is written in terms of those counts
over one sort of the rows made in advance, so a resample costs a pass over the rows instead of a sort, and equals
the metric of ``models.evaluation`` on the resampled rows (``tests/test_paired.py`` checks each one on
materialised resamples):

- ``roc_auc`` and ``pr_auc`` (sklearn's definitions, ties as tie blocks), ``top_decile_lift``;
- ``purchases_mae``, ``purchases_rmse``, ``purchases_abs_pct_error`` and ``spend_mae`` (truth: the holdout's
  purchases or spend; prediction: the expected ones);
- ``spearman`` (average ranks), ``gini`` (normalised) and ``top_decile_capture`` (truth: the holdout spend;
  prediction: the value score that ranks customers). Tied scores keep the rows' order, as in
  ``models.evaluation``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
Kernel = Callable[[Array], Array]  # counts (resamples x rows) -> the metric of each resample

CELLS_PER_BATCH = 4_000_000  # resamples x rows held at once: about 32 MB per array of counts


def _blocks(values: Array, *, descending: bool) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A stable sort of ``values`` and where each run of equal values (a tie block) starts in it."""
    order = np.argsort(-values if descending else values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts


def _by_block(ws: Array, positive: Array, starts: npt.NDArray[np.int64]) -> tuple[Array, Array]:
    """Counts of positive and negative rows per tie block (rows already in sorted order); no ties, no summing."""
    pos = ws * positive
    if len(starts) == ws.shape[1]:
        return pos, ws - pos
    pos, every = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(ws, starts, axis=1)
    return pos, every - pos


def _roc_auc(truth: Array, score: Array) -> Kernel:
    order, starts = _blocks(score, descending=False)
    positive = truth[order]

    def on(w: Array) -> Array:
        pos, neg = _by_block(w[:, order], positive, starts)
        below = np.cumsum(neg, axis=1) - neg
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))

    return on


def _pr_auc(truth: Array, score: Array) -> Kernel:
    order, starts = _blocks(score, descending=True)
    positive = truth[order]

    def on(w: Array) -> Array:
        pos, neg = _by_block(w[:, order], positive, starts)
        tp, flagged = np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1)
        precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
        return (pos * precision).sum(axis=1) / pos.sum(axis=1)

    return on


def _top_share_of(truth: Array, score: Array, share: float) -> Callable[[Array], tuple[Array, Array]]:
    """The truth summed over the top ``share`` of each resample ranked by ``score``, and that top's size."""
    order = np.argsort(-score, kind="stable")
    ordered = truth[order]

    def on(w: Array) -> tuple[Array, Array]:
        ws = w[:, order]
        k = np.maximum(1.0, np.ceil(share * ws.sum(axis=1)))
        before = np.cumsum(ws, axis=1) - ws
        inside = np.clip(k[:, None] - before, 0.0, ws)
        return (inside * ordered).sum(axis=1), k

    return on


def _top_decile_lift(truth: Array, score: Array) -> Kernel:
    top = _top_share_of(truth, score, 0.1)

    def on(w: Array) -> Array:
        caught, k = top(w)
        return (caught / k) / ((w * truth).sum(axis=1) / w.sum(axis=1))

    return on


def _top_decile_capture(truth: Array, score: Array) -> Kernel:
    top = _top_share_of(truth, score, 0.1)
    return lambda w: top(w)[0] / (w * truth).sum(axis=1)


def _lorenz(truth: Array, order: npt.NDArray[np.int64]) -> Kernel:
    """The (unnormalised) Gini of ``truth`` in row ``order`` of each resample; a row drawn c times sits c times."""
    ordered = truth[order]

    def on(w: Array) -> Array:
        ws = w[:, order]
        mass = ws * ordered
        before = np.cumsum(mass, axis=1) - mass
        n = ws.sum(axis=1)
        area = (ws * before + ordered * ws * (ws + 1.0) / 2.0).sum(axis=1) / mass.sum(axis=1)
        return area / n - (n + 1.0) / (2.0 * n)

    return on


def _gini(truth: Array, score: Array) -> Kernel:
    model = _lorenz(truth, np.argsort(-score, kind="stable"))
    best = _lorenz(truth, np.argsort(-truth, kind="stable"))
    return lambda w: model(w) / best(w)


def _ranks(values: Array) -> Kernel:
    """Each row's average rank (1 = smallest) among each resample's rows, ties sharing their mean rank."""
    order, starts = _blocks(values, descending=False)
    first = np.zeros(len(values), dtype=np.int64)
    first[starts] = 1
    block = np.empty(len(values), dtype=np.int64)
    block[order] = np.cumsum(first) - 1  # each row's tie block

    def on(w: Array) -> Array:
        counts = np.add.reduceat(w[:, order], starts, axis=1)
        rank = np.cumsum(counts, axis=1) - counts + (counts + 1.0) / 2.0
        return rank[:, block]

    return on


def _spearman(truth: Array, score: Array) -> Kernel:
    rank_truth, rank_score = _ranks(truth), _ranks(score)

    def on(w: Array) -> Array:
        n = w.sum(axis=1, keepdims=True)
        a, b = rank_truth(w), rank_score(w)
        a = a - (w * a).sum(axis=1, keepdims=True) / n
        b = b - (w * b).sum(axis=1, keepdims=True) / n
        return (w * a * b).sum(axis=1) / np.sqrt((w * a * a).sum(axis=1) * (w * b * b).sum(axis=1))

    return on


def _mae(truth: Array, prediction: Array) -> Kernel:
    error = np.abs(prediction - truth)
    return lambda w: (w * error).sum(axis=1) / w.sum(axis=1)


def _rmse(truth: Array, prediction: Array) -> Kernel:
    squared = (prediction - truth) ** 2
    return lambda w: np.sqrt((w * squared).sum(axis=1) / w.sum(axis=1))


def _abs_pct_error(truth: Array, prediction: Array) -> Kernel:
    return lambda w: 100.0 * np.abs((w * prediction).sum(axis=1) / (w * truth).sum(axis=1) - 1.0)


# metric -> (its kernel, whether higher is better)
KERNELS: dict[str, tuple[Callable[[Array, Array], Kernel], bool]] = {
    "roc_auc": (_roc_auc, True),
    "pr_auc": (_pr_auc, True),
    "top_decile_lift": (_top_decile_lift, True),
    "spearman": (_spearman, True),
    "gini": (_gini, True),
    "top_decile_capture": (_top_decile_capture, True),
    "purchases_mae": (_mae, False),
    "spend_mae": (_mae, False),
    "purchases_rmse": (_rmse, False),
    "purchases_abs_pct_error": (_abs_pct_error, False),
}


def metric_kernel(metric: str, truth: npt.ArrayLike, prediction: npt.ArrayLike) -> Kernel:
    """The function from a batch of row counts to ``metric`` of ``prediction`` against ``truth`` on each resample."""
    if metric not in KERNELS:
        raise ValueError(f"no paired interval for metric {metric!r}; use one of {sorted(KERNELS)}")
    return KERNELS[metric][0](np.asarray(truth, dtype=np.float64), np.asarray(prediction, dtype=np.float64))


def resample_counts(rng: np.random.Generator, resamples: int, rows: int) -> Array:
    """How often each of ``rows`` rows is drawn in each of ``resamples`` bootstrap resamples (rows drawn with
    replacement, as many as there are)."""
    drawn = rng.integers(0, rows, size=(resamples, rows)) + np.arange(resamples)[:, None] * rows
    return np.bincount(drawn.ravel(), minlength=resamples * rows).reshape(resamples, rows).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class PairedGain:
    """How much better the candidate is than the reference on ``metric``, on the same rows, with its interval.

    ``gain`` is in the metric's units and positive when the candidate is better (for an error metric: the
    reference's error minus the candidate's); with strata, it is each stratum's gain weighted by its rows.
    ``low`` and ``high`` bound the gain at ``level``: the percentile bootstrap over ``resamples`` resamples
    (``kept`` of them defined: a resample with no churner has no ROC-AUC) of ``rows`` rows. ``rows`` is below
    ``total_rows`` when a seeded draw capped them; the point figures use all ``total_rows``, and the capped
    interval is moved by the difference between the two points, so it stays centred where all rows put the gain.
    """

    metric: str
    candidate: float
    reference: float
    gain: float
    low: float
    high: float
    level: float
    resamples: int
    rows: int
    total_rows: int
    kept: int | None = None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return dataclasses.asdict(self)

    def words(self) -> str:
        """The gain and its interval as a reviewer reads them."""
        rows = f"{self.rows:,} rows" + (f" drawn from {self.total_rows:,}" if self.rows < self.total_rows else "")
        kept = "" if self.kept is None or self.kept == self.resamples else f", {self.kept:,} of them defined"
        return (
            f"gain {self.gain:+.4g}, {self.level:.0%} interval [{self.low:+.4g}, {self.high:+.4g}] "
            f"({self.resamples:,} paired resamples of {rows}{kept})"
        )


def _codes(labels: npt.ArrayLike | None, n: int, what: str) -> npt.NDArray[np.int64]:
    if labels is None:
        return np.arange(n)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)
    if len(codes) != n:
        raise ValueError(f"paired_gain: {len(codes)} {what} labels for {n} rows")
    return codes


def _cap(rng: np.random.Generator, group: npt.NDArray[np.int64], max_rows: int | None) -> npt.NDArray[np.int64] | None:
    """Rows of a seeded draw of whole clusters holding at most ``max_rows`` rows (None: no cap needed)."""
    if max_rows is None or len(group) <= max_rows:
        return None
    sizes = np.bincount(group)
    order = rng.permutation(len(sizes))
    take = order[: max(1, int(np.searchsorted(np.cumsum(sizes[order]), max_rows, side="right")))]
    return np.flatnonzero(np.isin(group, take))


class _Strata:
    """Each stratum's kernels for both predictions and its weight (its share of all rows)."""

    def __init__(self, metric: str, y: Array, a: Array, b: Array, stratum: npt.NDArray[np.int64], weights: Array):
        self.rows = [np.flatnonzero(stratum == s) for s in range(len(weights))]
        self.weights = weights
        self.on_a = [metric_kernel(metric, y[r], a[r]) for r in self.rows]
        self.on_b = [metric_kernel(metric, y[r], b[r]) for r in self.rows]

    def values(self, counts: Array) -> tuple[Array, Array]:
        """Both predictions' metric on each resample (``counts``: resamples x rows), weighted over strata."""
        va = sum(w * on(counts[:, r]) for w, on, r in zip(self.weights, self.on_a, self.rows, strict=True))
        vb = sum(w * on(counts[:, r]) for w, on, r in zip(self.weights, self.on_b, self.rows, strict=True))
        return np.asarray(va), np.asarray(vb)


def paired_gain(
    metric: str,
    truth: npt.ArrayLike,
    candidate: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    max_rows: int | None = None,
    clusters: npt.ArrayLike | None = None,
    strata: npt.ArrayLike | None = None,
) -> PairedGain:
    """The candidate's gain over the reference on ``metric`` with its paired bootstrap interval.

    Both predictions are of the same rows in the same order. With ``clusters`` (a label per row, e.g. the customer
    when rows of several cutoffs are pooled) whole clusters are resampled, so rows of one customer are never
    counted as independent evidence. With ``strata`` (a label per row, e.g. the evaluation origin) the metric is
    computed within each stratum and the strata are averaged, weighted by their rows: rows of different strata
    are never ranked against each other, so scores on different scales at different origins cannot make a gain
    that no origin shows. Past ``max_rows`` rows the interval is computed on a seeded draw of whole clusters (or
    rows) holding at most that many, then centred on the all-rows gain: wider than on all rows, never shifted.
    """
    if metric not in KERNELS:
        raise ValueError(f"no paired interval for metric {metric!r}; use one of {sorted(KERNELS)}")
    y = np.asarray(truth, dtype=np.float64)
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if not len(y) == len(a) == len(b):
        raise ValueError(
            f"paired_gain needs one truth and two predictions of the same rows; got {len(y)}, {len(a)}, {len(b)}"
        )
    if len(y) == 0:
        raise ValueError("paired_gain needs at least one row")
    for name, values in (("truth", y), ("candidate", a), ("reference", b)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"paired_gain: the {name} holds {int((~np.isfinite(values)).sum())} non-finite value(s)")
    if resamples < 2 or not 0.0 < level < 1.0:
        raise ValueError(f"paired_gain needs resamples >= 2 and 0 < level < 1; got {resamples} and {level}")
    sign = 1.0 if KERNELS[metric][1] else -1.0
    total = len(y)
    group = _codes(clusters, total, "cluster")
    stratum = np.zeros(total, dtype=np.int64) if strata is None else _codes(strata, total, "stratum")
    weights = np.bincount(stratum) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        whole = _Strata(metric, y, a, b, stratum, weights).values(np.ones((1, total)))
    value_a, value_b = float(whole[0][0]), float(whole[1][0])
    rng = np.random.default_rng(seed)
    keep = _cap(rng, group, max_rows)
    if keep is not None:
        y, a, b, stratum = y[keep], a[keep], b[keep], stratum[keep]
        group = np.unique(group[keep], return_inverse=True)[1].reshape(-1)
    present = np.bincount(stratum, minlength=len(weights)) > 0
    sub_weights = np.where(present, weights, 0.0) / weights[present].sum()
    drawn_from = _Strata(metric, y, a, b, stratum, sub_weights)
    n_groups = int(group.max()) + 1
    batch = max(1, CELLS_PER_BATCH // len(y))
    gains = []
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample with no churner has no AUC: left out below
        shift = 0.0
        if keep is not None:
            sa, sb = drawn_from.values(np.ones((1, len(y))))
            shift = sign * (value_a - value_b) - sign * float(sa[0] - sb[0])
        for start in range(0, resamples, batch):
            counts = resample_counts(rng, min(batch, resamples - start), n_groups)
            if clusters is not None:
                counts = counts[:, group]
            va, vb = drawn_from.values(counts)
            gains.append(sign * (va - vb) + shift)
    drawn = np.concatenate(gains)
    drawn = drawn[np.isfinite(drawn)]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(drawn, [tail, 1.0 - tail]) if len(drawn) else (np.nan, np.nan)
    return PairedGain(
        metric=metric,
        candidate=value_a,
        reference=value_b,
        gain=sign * (value_a - value_b),
        low=float(low),
        high=float(high),
        level=level,
        resamples=resamples,
        rows=len(y),
        total_rows=total,
        kept=len(drawn),
    )
