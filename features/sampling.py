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

# Tells this draw's random stream apart from the churn stage's row cap at the same cutoff (cutoff_seed without one).
FEATURES_DRAW = 1


def cutoff_seed(seed: int, cutoff: dt.date, *purpose: int) -> tuple[int, ...]:
    """The random stream of one cutoff's draw: the run's seed, the date (each cutoff draws independently) and what
    the draw is for (two draws at one cutoff get independent streams)."""
    return (seed, int(cutoff.strftime("%Y%m%d")), *purpose)


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
    rng = np.random.default_rng(cutoff_seed(seed, cutoff, FEATURES_DRAW))
    kept = np.sort(rng.choice(eligible, size=max_customers, replace=False))
    return customer_ids.take(pa.array(kept)), len(eligible)
