"""The champion gate: does a newly trained model replace the registered champion?

Pure code: two figures of one holdout metric in, a decision out. Where the figures come from (the registry, a
re-scoring of the champion on the new holdout) is the stage's business; this module only decides, and says why in
words a reviewer can sign off on.

The rule: the new model becomes ``champion`` when there is no champion yet, or when it beats the champion's figure
*on the same holdout* by at least ``min_improvement`` (and by more than nothing: a tie never moves the alias).
Otherwise it is registered as ``challenger``, and so it is when the champion could not be judged on this holdout
at all: a model that cannot be compared is not promoted by default.

A rerun that trains the very same model (``content_fingerprint``) and judges it on the same holdout is not a new
candidate: judged against itself it would only tie. Its registered version is reused, with the decision recorded
for it, as long as that decision still stands (``decision_stands``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from models.clv_base import HIGHER_IS_BETTER, LOWER_IS_BETTER

Alias = Literal["champion", "challenger"]
CHAMPION: Alias = "champion"
CHALLENGER: Alias = "challenger"

# Churn metrics the gate can judge from the trees' raw scores alone (ranking metrics): a champion's figure can
# then be recomputed on any holdout without its calibrator, which was fitted on a different season.
CHURN_GATE_METRICS = ("roc_auc", "pr_auc", "top_decile_lift")
_HIGHER = frozenset((*HIGHER_IS_BETTER, *CHURN_GATE_METRICS))
_LOWER = frozenset(LOWER_IS_BETTER)


def holdout_fingerprint(cutoff: Any, ids: pd.Series, outcomes: Mapping[str, Any]) -> str:
    """SHA-256 of a holdout: its cutoff, its customers and what they went on to do, order-independent.

    Two runs with the same fingerprint were judged on exactly the same rows and answers, so their logged figures
    can be compared as they are, whatever features or settings each model used.
    """
    order = np.argsort(ids.astype(str).to_numpy(), kind="stable")
    digest = hashlib.sha256(str(pd.Timestamp(cutoff).date()).encode())
    digest.update("\0".join(ids.astype(str).to_numpy()[order]).encode())
    for name in sorted(outcomes):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(np.asarray(outcomes[name], dtype=np.float64)[order]).tobytes())
    return digest.hexdigest()


def content_fingerprint(content: Any) -> str:
    """SHA-256 of a model's content (JSON-able: text, numbers, nested lists and mappings), key order aside.

    Floats are written in their shortest round-trip form, so equal fingerprints mean bit-identical parameters.
    """
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better; ValueError for a metric the gate does not know."""
    if metric in _HIGHER:
        return True
    if metric in _LOWER:
        return False
    raise ValueError(f"the champion gate does not know metric {metric!r}; use one of {sorted(_HIGHER | _LOWER)}")


@dataclasses.dataclass(frozen=True)
class ChampionFigure:
    """The current champion as the gate sees it: its version and its figure on the new holdout.

    ``value`` is None when the champion could not be judged on this holdout; ``why_not`` then says why.
    ``how`` says where the figure came from (the same holdout's logged value, or a re-scoring).
    """

    version: str
    value: float | None
    how: str = ""
    why_not: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """Which alias the new version gets, with both figures and the reason."""

    alias: Alias
    metric: str
    min_improvement: float
    new_value: float
    champion_version: str | None
    champion_value: float | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def decide(metric: str, min_improvement: float, new_value: float, champion: ChampionFigure | None) -> Decision:
    """Champion or challenger for a new model whose holdout ``metric`` is ``new_value``.

    Parameters
    ----------
    metric
        The holdout metric both figures are of (its direction comes from ``higher_is_better``).
    min_improvement
        How much better than the champion the new model must be, in the metric's own units (>= 0).
    new_value
        The new model's figure on the holdout.
    champion
        The current champion and its figure on the same holdout; None when no version holds the alias yet.
    """
    if min_improvement < 0:
        raise ValueError(f"min_improvement must be >= 0, got {min_improvement}")
    up = higher_is_better(metric)

    def made(alias: Alias, reason: str) -> Decision:
        return Decision(
            alias=alias,
            metric=metric,
            min_improvement=min_improvement,
            new_value=new_value,
            champion_version=champion.version if champion else None,
            champion_value=champion.value if champion else None,
            reason=reason,
        )

    if not math.isfinite(new_value):
        return made(CHALLENGER, f"the new model's {metric} is not a number; it cannot be judged")
    if champion is None:
        return made(CHAMPION, "no champion yet: the first registered version becomes champion")
    if champion.value is None or not math.isfinite(champion.value):
        why = champion.why_not or "its figure on this holdout is unknown"
        return made(CHALLENGER, f"champion v{champion.version} cannot be compared on this holdout ({why}); kept")
    gain = new_value - champion.value if up else champion.value - new_value
    versus = f"{metric} {new_value:.6g} vs champion v{champion.version} {champion.value:.6g} ({champion.how})"
    if gain > 0 and gain >= min_improvement:
        return made(CHAMPION, f"{versus}: better by {gain:.6g}, at least the {min_improvement:g} needed")
    if gain > 0:
        return made(CHALLENGER, f"{versus}: better by only {gain:.6g}, short of {min_improvement:g}; champion kept")
    return made(CHALLENGER, f"{versus}: {'no better' if gain == 0 else f'worse by {-gain:.6g}'}; champion kept")


def decision_stands(
    recorded: Decision, version: str, champion_version: str | None, metric: str, min_improvement: float
) -> bool:
    """Whether the decision recorded for registered ``version`` is still the gate's answer for the same model on the
    same holdout: the rule is unchanged (``metric``, ``min_improvement``) and so is the champion it was judged
    against. A version made champion stands while it holds the alias (``champion_version``, None when no version
    does); a challenger while the champion it lost to still holds it.
    """
    if recorded.metric != metric or recorded.min_improvement != min_improvement:
        return False
    if recorded.alias == CHAMPION:
        return champion_version == version
    return champion_version == recorded.champion_version
