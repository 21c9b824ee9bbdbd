"""A seeded synthetic transaction log drawn from the BG/NBD purchase process with Gamma-Gamma spend.

Each customer has a purchase rate lambda ~ Gamma(r, alpha) and, after every purchase, drops out with
probability p ~ Beta(a, b) (Fader, Hardie & Lee 2005, section 2); spend per purchase is Gamma(p_s, nu) with
nu ~ Gamma(q, gamma) (Fader, Hardie & Lee 2005b, "RFM and CLV"). Defaults are the published CDNOW estimates,
with the rate converted from weeks to days, so the log looks like CDNOW at any size: about three purchase days
per customer, acquisition spread over the first twelve weeks, 78 weeks observed.
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


def generate(n_customers: int, seed: int, params: ProcessParams | None = None) -> pd.DataFrame:
    """Return a transactions table (customer_id, ts, amount, order_id) for ``n_customers`` customers."""
    pr = params or ProcessParams()
    rng = np.random.default_rng(seed)
    lam = rng.gamma(pr.r, 1.0 / (pr.alpha_weeks * 7.0), n_customers)  # purchases per day
    drop = rng.beta(pr.a, pr.b, n_customers)
    nu = rng.gamma(pr.spend_q, 1.0 / pr.spend_gamma, n_customers)
    t = rng.uniform(0, pr.acquisition_days, n_customers)
    ids = [np.arange(n_customers)]
    times = [t.copy()]
    active = np.arange(n_customers)
    while active.size:
        active = active[rng.random(active.size) >= drop[active]]  # survives the purchase just made
        t[active] += rng.exponential(1.0 / lam[active])
        active = active[t[active] < pr.observed_days]
        ids.append(active)
        times.append(t[active].copy())
    cid = np.concatenate(ids)
    when = np.concatenate(times)
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
