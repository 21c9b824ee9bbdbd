"""What counting purchase days (as the features stage does) does to a BTYD fit against a continuous-time truth.

Run from the repository root: ``python -m bench.day_counting --customers 200000``. Draws one seeded log from the
BG/NBD and one from the MBG/NBD process (bench.synthetic), summarises each twice, from the exact purchase times and
per calendar day (purchases on one day are one purchase day; recency and T in whole days, as
``features.behaviour`` counts them), fits the model of that process to both in ``base.time_unit`` weeks and days,
and prints the share of repeat purchases merged and every parameter with its 90% interval beside the truth.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.synthetic import PROCESSES, ProcessParams, purchase_times
from models.purchases import PurchaseModel

UNITS = {"weeks": 7.0, "days": 1.0}


def daily_summary(
    cid: np.ndarray, when: np.ndarray, n: int, observed_days: int, days_per_unit: float
) -> tuple[np.ndarray, ...]:
    """frequency, recency and T from purchase days: the day is the floor of the purchase time."""
    day = np.floor(when).astype(np.int64)
    pairs = np.unique(cid.astype(np.int64) * (observed_days + 1) + day)
    who, which = pairs // (observed_days + 1), pairs % (observed_days + 1)
    first = np.full(n, observed_days, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    np.minimum.at(first, who, which)
    np.maximum.at(last, who, which)
    frequency = np.bincount(who, minlength=n) - 1
    return frequency.astype(np.float64), (last - first) / days_per_unit, (observed_days - 1 - first) / days_per_unit


def exact_summary(cid: np.ndarray, when: np.ndarray, first: np.ndarray, observed_days: int) -> tuple[np.ndarray, ...]:
    n = len(first)
    last = np.full(n, -np.inf)
    np.maximum.at(last, cid, when)
    return (np.bincount(cid, minlength=n) - 1).astype(np.float64), (last - first) / 7.0, (observed_days - first) / 7.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pr = ProcessParams()
    truth = {"r": pr.r, "alpha": pr.alpha_weeks, "a": pr.a, "b": pr.b}
    for process in PROCESSES:
        cid, when, first, _ = purchase_times(args.customers, np.random.default_rng(args.seed), pr, process)
        repeats = len(cid) - args.customers
        fits = {"exact times, weeks": exact_summary(cid, when, first, pr.observed_days)}
        for unit, per in UNITS.items():
            fits[f"purchase days, {unit}"] = daily_summary(cid, when, args.customers, pr.observed_days, per)
        merged = 1.0 - fits["purchase days, weeks"][0].sum() / repeats
        print(f"{process}: {args.customers:,} customers, {repeats:,} repeat purchases, {merged:.2%} merged by day")
        for what, (f, r, t) in fits.items():
            report = PurchaseModel(process).fit(f, r, t).report()
            cells = []
            for name, value in report.params.items():
                low, high = report.interval_90[name]
                scale = 7.0 if name == "alpha" and what.endswith("days") else 1.0
                mark = "" if low <= truth[name] * scale <= high else " (misses)"
                cells.append(f"{name} {value:.4g} [{low:.4g}, {high:.4g}]{mark}")
            print(f"  {what:22s} " + "; ".join(cells))
    print(f"truth: r {pr.r}, alpha {pr.alpha_weeks} weeks ({pr.alpha_weeks * 7:.4g} days), a {pr.a}, b {pr.b}")


if __name__ == "__main__":
    main()
