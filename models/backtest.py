"""Backtest over many evaluation origins: which cutoffs each origin trains on, and how candidates compare.

Pure code. An *origin* is a labelled cutoff at which the pipeline could have trained and scored: the models then
see only the cutoffs whose label horizon had ended by the origin, split as production splits them
(``models.churn.split_cutoffs``), and are judged on the origin's own customers over its horizon, which no training
row, early stop or calibration saw.

Candidates are compared in pairs on the same rows: per origin (the point difference, whose spread over origins
says how stable a lead is) and over all origins, each origin's gain weighted by its customers, with a paired
bootstrap interval that resamples customers, not rows (``models.paired``: a customer at six origins is one
customer's evidence, not six). Rows of different origins are never ranked against each other: each origin's model
scores on its own scale.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.errors import InputError
from models.churn import CutoffSplit, split_cutoffs
from models.gate import gain_shown
from models.paired import KERNELS, metric_kernel, paired_gain


@dataclasses.dataclass(frozen=True)
class Origin:
    """One evaluation origin and the production split of what was fully observed by then."""

    cutoff: pd.Timestamp
    split: CutoffSplit

    def as_dict(self) -> dict[str, object]:
        return {
            "origin": str(self.cutoff.date()),
            "validation_cutoff": str(self.split.validation.date()),
            "training_cutoffs": [str(c.date()) for c in self.split.training],
        }


def evaluation_origins(labelled: Sequence[pd.Timestamp], horizon_days: int, count: int) -> list[Origin]:
    """The latest ``count`` labelled cutoffs at which production could have trained (a validation cutoff and at
    least one training cutoff whose horizons ended by then), oldest first."""
    ordered = sorted(pd.Timestamp(c) for c in labelled)
    horizon = pd.Timedelta(days=horizon_days)
    found = []
    for cutoff in ordered:
        seen = [c for c in ordered if c + horizon <= cutoff]
        try:
            found.append(Origin(cutoff, split_cutoffs(seen, horizon_days)))
        except InputError:
            continue  # too early: not two fully observed cutoffs yet
    return found[-count:]


def too_few(origins: Sequence[Origin], wanted: int, horizon_days: int) -> str | None:
    """Why the backtest has fewer origins than ``wanted``, in a line a user can act on; None when it has them."""
    if len(origins) >= wanted:
        return None
    return (
        f"backtest: {len(origins)} of the {wanted} origins asked for: an origin needs two earlier labelled cutoffs "
        f"whose {horizon_days}-day horizons ended by it; raise features.cutoff_schedule.count for more"
    )


@dataclasses.dataclass(frozen=True)
class Scored:
    """Every candidate's score of the same rows (higher = likelier to churn), with the truth, the customer and,
    for pooled rows, the origin each row belongs to."""

    truth: npt.NDArray[np.float64]
    scores: Mapping[str, npt.NDArray[np.float64]]
    customers: npt.NDArray[np.int64]  # a code per customer, equal across origins
    origin: npt.NDArray[np.int64] | None = None


def pooled(parts: Sequence[Scored]) -> Scored:
    """All origins' rows as one set (the candidates every part has), each row labelled with its origin."""
    names = [n for n in parts[0].scores if all(n in p.scores for p in parts)]
    return Scored(
        truth=np.concatenate([p.truth for p in parts]),
        scores={n: np.concatenate([p.scores[n] for p in parts]) for n in names},
        customers=np.concatenate([p.customers for p in parts]),
        origin=np.concatenate([np.full(len(p.truth), i) for i, p in enumerate(parts)]),
    )


def left_out(parts: Sequence[Scored], origins: Sequence[str]) -> dict[str, list[str]]:
    """Candidates missing at some origin (e.g. ``btyd`` where its fit failed), with those origins: the pooled
    comparison leaves them out, and says so."""
    names = {n for p in parts for n in p.scores}
    return {
        n: [o for o, p in zip(origins, parts, strict=True) if n not in p.scores]
        for n in sorted(names)
        if not all(n in p.scores for p in parts)
    }


def pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of candidates, in the order given (the first of a pair is the one judged)."""
    return list(itertools.combinations(names, 2))


def point(metric: str, data: Scored, name: str) -> float:
    """``metric`` of one candidate on all of ``data``'s rows."""
    return float(metric_kernel(metric, data.truth, data.scores[name])(np.ones((1, len(data.truth))))[0])


def differences(
    metric: str,
    per_origin: Sequence[Scored],
    everything: Scored,
    *,
    resamples: int,
    level: float,
    seed: int,
    max_rows: int | None,
) -> list[dict[str, object]]:
    """For every pair (a, b): a's gain over b in ``metric`` (positive = a better) over all origins, with its paired
    interval, and per origin, with the mean, spread and wins over origins.

    The gain over all origins is each origin's gain weighted by its customers (``strata``: a row is ranked only
    against rows of its own origin), and its interval resamples customers across every origin at once."""
    if metric not in KERNELS:
        raise ValueError(f"no paired interval for metric {metric!r}")
    out = []
    for i, (a, b) in enumerate(pairs(list(everything.scores))):
        gain = paired_gain(
            metric,
            everything.truth,
            everything.scores[a],
            everything.scores[b],
            resamples=resamples,
            level=level,
            seed=seed + i,
            max_rows=max_rows,
            clusters=everything.customers,
            strata=everything.origin,
        )
        sign = 1.0 if KERNELS[metric][1] else -1.0
        by_origin = [sign * (point(metric, part, a) - point(metric, part, b)) for part in per_origin]
        out.append(
            {
                "candidate": a,
                "versus": b,
                "metric": metric,
                "pooled_gain": gain.gain,
                "low": gain.low,
                "high": gain.high,
                "level": level,
                "resamples": resamples,
                "rows": gain.rows,
                "by_origin": by_origin,
                "origin_mean": float(np.mean(by_origin)),
                "origin_sd": float(np.std(by_origin, ddof=1)) if len(by_origin) > 1 else float("nan"),
                "origins_won": int(sum(d > 0 for d in by_origin)),
                "verdict": verdict(a, b, gain.low, gain.high),
            }
        )
    return out


def verdict(a: str, b: str, low: float, high: float) -> str:
    """The interval in words: who is shown better, or that the data cannot tell."""
    if low > 0:
        return f"{a} better"
    if high < 0:
        return f"{b} better"
    return "no difference shown"


MODEL = "model"


def unjudged(scorer: str, metric: str, need: float, reason: str, best_rule: str | None = None) -> dict[str, object]:
    """A serving choice made without a paired gain to judge (``serving_choice``'s fields, the gain's left empty)."""
    return {
        "scorer": scorer,
        "metric": metric,
        "best_rule": best_rule,
        "min_improvement": need,
        "gain": None,
        "low": None,
        "high": None,
        "reason": reason,
    }


def serving_choice(
    metric: str,
    pooled_metrics: Mapping[str, Mapping[str, float]],
    gains: Sequence[Mapping[str, object]],
    need: float,
    *,
    challenger: str = MODEL,
    unservable: Sequence[str] = (),
) -> dict[str, object]:
    """Which candidate serves, by the champion gate's rule applied to the backtest.

    The best rule is the candidate other than ``challenger`` with the highest pooled ``metric``. The challenger
    serves only when the lower bound of its pooled paired gain over that rule (``gains``: ``differences(metric,
    ...)``) is above zero and at least ``need``; otherwise the best rule serves. Either way the served ranking is
    never shown worse than the best rule: no rule beats the best rule's pooled figure, and the challenger serves
    only with its gain shown. A rule in ``unservable`` (a yardstick that cannot value customers, such as the naive
    CLV baseline) still sets the bar, but when it is the best rule the best servable rule serves, and the reason
    says by how much the yardstick ranked better.
    """
    who = "the model" if challenger == MODEL else challenger
    rules = [n for n in pooled_metrics if n != challenger]
    if not rules:
        return unjudged(challenger, metric, need, f"no rule could be scored at every origin: {who} serves")
    lower = metric in KERNELS and not KERNELS[metric][1]
    best = (min if lower else max)(rules, key=lambda n: pooled_metrics[n][metric])
    servable = [n for n in rules if n not in unservable]
    if challenger not in pooled_metrics:
        fallback = _servable_best(best, servable, pooled_metrics, metric, lower)
        return unjudged(fallback, metric, need, f"{who} was not scored at every origin: {fallback} serves", best)
    edge = next(d for d in gains if {d["candidate"], d["versus"]} == {challenger, best})
    sign = 1.0 if edge["candidate"] == challenger else -1.0
    gain, low, high = (sign * float(edge[k]) for k in ("pooled_gain", "low", "high"))  # type: ignore[arg-type]
    if sign < 0:
        low, high = high, low
    interval = f"{metric} gain over {best} {gain:+.4f} [{low:+.4f}, {high:+.4f}]"
    bar = f"zero and {need:g}" if need > 0 else "zero"
    if gain_shown(low, need):
        scorer, reason = challenger, f"{who} serves: {interval}; its lower bound clears {bar}"
    else:
        scorer = _servable_best(best, servable, pooled_metrics, metric, lower)
        reason = f"{scorer} serves: {who}'s {interval} does not clear {bar}"
        if scorer != best:
            reason += (
                f"; {best} ranks best ({pooled_metrics[best][metric]:.4f} against {scorer}'s "
                f"{pooled_metrics[scorer][metric]:.4f}) but is a yardstick that cannot value customers"
            )
    return {
        "scorer": scorer,
        "metric": metric,
        "best_rule": best,
        "min_improvement": need,
        "gain": gain,
        "low": low,
        "high": high,
        "reason": reason,
    }


def _servable_best(
    best: str, servable: Sequence[str], pooled_metrics: Mapping[str, Mapping[str, float]], metric: str, lower: bool
) -> str:
    if best in servable or not servable:
        return best
    return (min if lower else max)(servable, key=lambda n: pooled_metrics[n][metric])
