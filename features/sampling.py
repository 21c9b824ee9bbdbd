"""Which customers a training snapshot keeps when there are more than the models can use.

The churn model trains on a bounded number of rows however large the customer base is, so featurising every
customer at every training cutoff only to drop most of them afterwards is wasted work. The draw is made before
featurising, from each customer's first purchase day: a customer exists at a cutoff once they have bought on or
before it. Every customer of a snapshot has the same chance of being kept, independently at each cutoff.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt
import pyarrow as pa


def cutoff_seed(seed: int, cutoff: dt.date) -> tuple[int, int]:
    """The random stream of one cutoff's draw: the run's seed and the date, so each cutoff draws independently."""
    return (seed, int(cutoff.strftime("%Y%m%d")))


def sample_customers(
    customer_ids: pa.Array,
    first_days: npt.NDArray[np.datetime64],
    cutoff: dt.date,
    *,
    max_customers: int,
    seed: int,
) -> tuple[pa.Array | None, int]:
    """At most ``max_customers`` of the customers who had bought by ``cutoff``, and how many had.

    ``customer_ids`` and ``first_days`` (``datetime64[D]``) are one entry per customer. Returns ``(None, n)``
    when all ``n`` fit (nothing to draw), else the drawn ids in the order of ``customer_ids`` and ``n``. The same
    inputs and ``seed`` give the same draw.
    """
    if len(customer_ids) != len(first_days):
        raise ValueError(f"sample_customers: {len(customer_ids)} ids but {len(first_days)} first days")
    eligible = np.flatnonzero(first_days <= np.datetime64(cutoff, "D"))
    if len(eligible) <= max_customers:
        return None, len(eligible)
    rng = np.random.default_rng(cutoff_seed(seed, cutoff))
    kept = np.sort(rng.choice(eligible, size=max_customers, replace=False))
    return customer_ids.take(pa.array(kept)), len(eligible)
