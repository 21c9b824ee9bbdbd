"""Population stability index: how far the scoring week's customers have moved from the training cutoff's.

PSI = sum over bins of (q - p) * ln(q / p), where p is a bin's share at the reference (training) cutoff and q its
share now. The bins are the reference's quantiles, so each holds about 1/bins of the reference; a feature with
few distinct values gets fewer bins (repeated edges merge), and missing values have a bin of their own. The
usual reading: below 0.1 stable, 0.1 to 0.2 a moderate shift, above 0.2 a shift worth checking before acting
on the scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# A share of zero would make ln(q / p) infinite; an empty bin counts as this share instead.
MIN_SHARE = 1e-4


def bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points: the distinct inner quantiles of the finite reference values (bins ``(e[i-1], e[i]]``)."""
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        return np.empty(0)
    # Quantiles that are data values (no interpolation): a count feature's edges stay on its counts.
    inner = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    return np.unique(inner)


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin (``x <= edge`` goes left), then the share missing (NaN) as the last bin."""
    finite = np.isfinite(values)
    counts = np.bincount(np.searchsorted(edges, values[finite], side="left"), minlength=edges.size + 1)
    full = np.append(counts, (~finite).sum()).astype(np.float64)
    return full / max(values.size, 1)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """The population stability index of ``current`` against ``reference`` (see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError(f"psi: need values on both sides, got {ref.size} reference and {cur.size} current")
    edges = bin_edges(ref, bins)
    ref_shares, cur_shares = shares(ref, edges), shares(cur, edges)
    p = np.maximum(ref_shares, MIN_SHARE)
    q = np.maximum(cur_shares, MIN_SHARE)
    both_empty = (ref_shares == 0) & (cur_shares == 0)
    return float(np.sum(np.where(both_empty, 0.0, (q - p) * np.log(q / p))))


def drift_table(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], bins: int) -> pd.DataFrame:
    """PSI, means and missing shares of each column, largest PSI first."""
    rows = []
    for c in columns:
        ref = reference[c].to_numpy(np.float64)
        cur = current[c].to_numpy(np.float64)
        rows.append(
            {
                "feature": c,
                "psi": psi(ref, cur, bins),
                "reference_mean": float(np.nanmean(ref)) if np.isfinite(ref).any() else np.nan,
                "scoring_mean": float(np.nanmean(cur)) if np.isfinite(cur).any() else np.nan,
                "reference_missing_share": float(np.mean(~np.isfinite(ref))),
                "scoring_missing_share": float(np.mean(~np.isfinite(cur))),
            }
        )
    return pd.DataFrame(rows).sort_values(["psi", "feature"], ascending=[False, True], ignore_index=True)
