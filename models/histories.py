"""Weighted unique histories: customers who share every value of some columns, collapsed into one weighted row.

Fits run on weighted unique ``(frequency, recency, T)`` histories (lifetimes' ``weights``), so their cost grows
with the number of distinct histories, not customers; predictions are made per history and joined back.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.errors import InputError
from models.clv_base import Array, check_histories


@dataclasses.dataclass(frozen=True)
class Histories:
    """Distinct rows of a set of columns, how many customers share each, and each customer's row."""

    values: dict[str, Array]
    weight: npt.NDArray[np.int64]
    inverse: npt.NDArray[np.int64]

    @property
    def n_customers(self) -> int:
        return len(self.inverse)

    def __len__(self) -> int:
        return len(self.weight)

    @functools.cached_property
    def ages(self) -> Histories:
        """The distinct (frequency, T) pairs of these purchase histories, and each history's pair (``inverse``).

        The costly 2F1 term of the BG/NBD expectations depends on nothing else (``models.purchases``); computed
        once and kept, so that the bootstrap's replicates evaluated on the same histories share it.
        """
        return unique_histories(frequency=self.values["frequency"], T=self.values["T"])


def unique_histories(**columns: Array) -> Histories:
    """Collapse customers with identical values in ``columns`` into one weighted row.

    Each column is factorised on its own (sorted) and the codes are packed into one integer key, factorised again:
    under a second for 10M customers and three columns, a fraction of a grouped DataFrame. When the next column
    would overflow the key, the key so far is factorised first (it then counts at most one code per row). The rows
    come sorted by the columns' values, in the order given, so fits on them do not depend on the customers' order.
    A NaN has no history to share: it is an error.
    """
    names = list(columns)
    codes: list[npt.NDArray[np.int64]] = []
    uniques: list[Array] = []
    for name, column in columns.items():
        c, u = pd.factorize(column, sort=True)
        if len(c) and c.min() < 0:
            raise InputError(f"{name}: {int((c < 0).sum())} missing value(s); every customer needs a value")
        codes.append(c.astype(np.int64, copy=False))
        uniques.append(np.asarray(u))
    key = codes[0]  # packed in place: at 10M customers every extra array costs its first touch of 80 MB
    span = len(uniques[0])  # key < span
    steps: list[tuple[str, Any]] = []  # how the key was built, to decode it: ("pack", size) or ("renumber", old)
    for c, u in zip(codes[1:], uniques[1:], strict=True):
        if float(span) * len(u) >= 2.0**62:
            key, old = _refactorise(key)
            steps.append(("renumber", old))
            span = len(old)
        key *= len(u)
        key += c
        span *= len(u)
        steps.append(("pack", len(u)))
    inverse, distinct = pd.factorize(key, sort=True)
    inverse = inverse.astype(np.int64, copy=False)
    rest = np.asarray(distinct, dtype=np.int64)
    parts: list[npt.NDArray[np.int64]] = []
    for kind, data in reversed(steps):
        if kind == "pack":
            rest, part = np.divmod(rest, data)
            parts.append(part)
        else:
            rest = data[rest]
    parts.append(rest)
    values = {n: u[part] for n, u, part in zip(names, uniques, reversed(parts), strict=True)}
    weight = np.bincount(inverse, minlength=len(distinct)).astype(np.int64)
    return Histories(values=values, weight=weight, inverse=inverse)


def _refactorise(key: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``key`` renumbered 0..k-1 in sorted order, and the old key value of each new code."""
    inverse, distinct = pd.factorize(key, sort=True)
    return inverse.astype(np.int64, copy=False), np.asarray(distinct, dtype=np.int64)


def histories(frequency: Any, recency: Any, T: Any) -> Histories:
    """Validated customer histories (see ``check_histories``) collapsed to weighted unique rows.

    Fitting and scoring both work on these: build them once and pass them to ``PurchaseModel.fit_histories`` and
    ``score`` when the same customers are fitted and scored.
    """
    f, r, t = check_histories(frequency, recency, T)
    return unique_histories(frequency=f, recency=r, T=t)
