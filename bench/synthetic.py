"""A seeded synthetic transaction log drawn from the BG/NBD or the MBG/NBD purchase process, with Gamma-Gamma spend.

Each customer has a purchase rate lambda ~ Gamma(r, alpha) and a dropout probability p ~ Beta(a, b); spend per
purchase is Gamma(p_s, nu) with nu ~ Gamma(q, gamma) (Fader, Hardie & Lee 2005b, "RFM and CLV"). The two
processes differ in when the dropout coin is tossed:

- ``bgnbd`` (Fader, Hardie & Lee 2005, section 2): after every *repeat* purchase. A customer is alive until their
  first repeat purchase at least, so one who never came back is alive for the model.
- ``mbgnbd`` (Batislam, Denizel & Filiztekin 2007): after every purchase, the first one included, so a customer
  may leave right after their first purchase.

Defaults are the published CDNOW estimates of BG/NBD, with the rate converted from weeks to days, so the log looks
like CDNOW at any size: about three purchase days per customer, acquisition spread over the first twelve weeks, 78
weeks observed. ``times_weeks`` gives each customer's exact purchase times, for fitting without the calendar-day
counting of the pipeline (which merges purchases made on one day).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

START = pd.Timestamp("2020-01-01", tz="UTC")


@dataclasses.dataclass(frozen=True)
class ProcessParams:
    r: float = 0.243
    alpha_weeks: float = 4.414
    a: float = 0.793
    b: float = 2.426
    spend_p: float = 6.25
    spend_q: float = 3.74
    spend_gamma: float = 15.44
    acquisition_days: int = 84
    observed_days: int = 546


PROCESSES = ("bgnbd", "mbgnbd")


def purchase_times(
    n_customers: int, rng: np.random.Generator, pr: ProcessParams, process: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every purchase as (customer index, day since the log's start), each customer's first day and spend scale
    nu (drawn in this order so that a seed gives the same log as it always did)."""
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    lam = rng.gamma(pr.r, 1.0 / (pr.alpha_weeks * 7.0), n_customers)  # purchases per day
    drop = rng.beta(pr.a, pr.b, n_customers)
    nu = rng.gamma(pr.spend_q, 1.0 / pr.spend_gamma, n_customers)
    first = rng.uniform(0, pr.acquisition_days, n_customers)
    t = first.copy()
    ids, times = [np.arange(n_customers)], [t.copy()]
    active = np.arange(n_customers)
    coin_now = process == "mbgnbd"  # BG/NBD tosses no coin at the first purchase
    while active.size:
        if coin_now:
            active = active[rng.random(active.size) >= drop[active]]  # survives the purchase just made
        coin_now = True
        t[active] += rng.exponential(1.0 / lam[active])
        active = active[t[active] < pr.observed_days]
        ids.append(active)
        times.append(t[active].copy())
    return np.concatenate(ids), np.concatenate(times), first, nu


def times_weeks(
    n_customers: int, seed: int, params: ProcessParams | None = None, process: str = "bgnbd"
) -> pd.DataFrame:
    """Each customer's exact BTYD summary in weeks at the end of the observed period: ``frequency`` (repeat
    purchases), ``recency`` (first to last purchase) and ``T`` (first purchase to the end)."""
    pr = params or ProcessParams()
    cid, when, first, _ = purchase_times(n_customers, np.random.default_rng(seed), pr, process)
    purchases = np.bincount(cid, minlength=n_customers)
    last = np.full(n_customers, -np.inf)
    np.maximum.at(last, cid, when)
    return pd.DataFrame(
        {
            "frequency": purchases - 1,
            "recency": (last - first) / 7.0,
            "T": (pr.observed_days - first) / 7.0,
        }
    )


def generate(n_customers: int, seed: int, params: ProcessParams | None = None, process: str = "mbgnbd") -> pd.DataFrame:
    """Return a transactions table (customer_id, ts, amount, order_id) for ``n_customers`` customers.

    The default is the MBG/NBD process, on which every benchmark in the README was measured.
    """
    pr = params or ProcessParams()
    rng = np.random.default_rng(seed)
    cid, when, _, nu = purchase_times(n_customers, rng, pr, process)
    amount = np.round(rng.gamma(pr.spend_p, 1.0 / nu[cid]), 2)
    order = np.lexsort((when, cid))
    width = len(str(n_customers))
    return pd.DataFrame(
        {
            "customer_id": pd.Series(np.char.zfill(cid[order].astype(str), width), dtype="str"),
            "ts": START + pd.to_timedelta(when[order], unit="D").round("s"),
            "amount": amount[order],
            "order_id": pd.Series([None] * len(cid), dtype="str"),
        }
    )
