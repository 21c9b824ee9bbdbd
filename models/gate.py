"""The champion gate: does a newly trained model replace the registered champion?

Pure code: the figures of one holdout metric and the paired interval of the gain in, a decision out. Where they
come from (the registry, a re-scoring of the champion on the new holdout rows) is the stage's business; this module
only decides, and says why in words a reviewer can sign off on.

The rule (``Rule``): the new model becomes ``champion`` when there is no champion yet, or when, *on the same
holdout rows*, the lower bound of its paired gain over the champion (``models.paired``: a bootstrap over the rows,
one draw shared by both models) is above zero and at least ``min_improvement``. A point estimate that wins by less
than the rows' noise does not move the alias: one holdout's ROC-AUC moves by about 0.01 between refits of the same
model, more than any useful ``min_improvement``. Otherwise the new model is registered as ``challenger``, and so it
is when the champion could not be judged on these rows at all: a model that cannot be compared is not promoted by
default.

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
import numpy.typing as npt
import pandas as pd

from models.clv_base import HIGHER_IS_BETTER, LOWER_IS_BETTER
from models.paired import PairedGain, paired_gain

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


def gain_shown(low: float, min_improvement: float) -> bool:
    """The gate's test of a paired interval: its lower bound is above zero and at least ``min_improvement``."""
    return math.isfinite(low) and low > 0 and low >= min_improvement


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a new model must show to take ``champion``: on the champion's own holdout rows, the lower bound of its
    paired gain in ``metric`` at ``level`` (``resamples`` bootstrap resamples of at most ``max_rows`` rows, drawn
    with ``seed``) is above zero and at least ``min_improvement`` (in the metric's units)."""

    metric: str
    min_improvement: float
    level: float = 0.95
    resamples: int = 1000
    max_rows: int | None = 50_000
    seed: int = 0

    def __post_init__(self) -> None:
        higher_is_better(self.metric)
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {self.min_improvement}")

    def evidence(self, truth: npt.ArrayLike, new: npt.ArrayLike, champion: npt.ArrayLike) -> PairedGain:
        """The new model's paired gain over the champion on the same rows (``models.paired``)."""
        return paired_gain(
            self.metric,
            truth,
            new,
            champion,
            resamples=self.resamples,
            level=self.level,
            seed=self.seed,
            max_rows=self.max_rows,
        )


@dataclasses.dataclass(frozen=True)
class ChampionFigure:
    """The current champion as the gate sees it: its version, its figure on the new holdout and the new model's
    paired gain over it there.

    ``value`` is None when the champion could not be judged on this holdout; ``why_not`` then says why.
    ``how`` says where the figure came from. ``paired`` is None when the champion's figure is known but not its
    predictions of these rows: a gain that cannot be put beside its noise moves no alias.
    """

    version: str
    value: float | None
    how: str = ""
    why_not: str | None = None
    paired: PairedGain | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """Which alias the new version gets, with both figures, the paired interval of the gain and the reason."""

    alias: Alias
    metric: str
    min_improvement: float
    level: float
    new_value: float
    champion_version: str | None
    champion_value: float | None
    gain_low: float | None
    gain_high: float | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def decide(rule: Rule, new_value: float, champion: ChampionFigure | None) -> Decision:
    """Champion or challenger for a new model whose holdout ``rule.metric`` is ``new_value``.

    ``champion`` is the current champion with its figure and the paired gain on the same holdout rows; None when no
    version holds the alias yet. The new model takes the alias only when the gain's lower bound clears
    ``rule.min_improvement`` and zero: a point estimate above the champion's, inside the rows' noise, is no evidence.
    """
    metric, need = rule.metric, rule.min_improvement
    gain = champion.paired if champion else None

    def made(alias: Alias, reason: str) -> Decision:
        return Decision(
            alias=alias,
            metric=metric,
            min_improvement=need,
            level=rule.level,
            new_value=new_value,
            champion_version=champion.version if champion else None,
            champion_value=champion.value if champion else None,
            gain_low=gain.low if gain else None,
            gain_high=gain.high if gain else None,
            reason=reason,
        )

    if not math.isfinite(new_value):
        return made(CHALLENGER, f"the new model's {metric} is not a number; it cannot be judged")
    if champion is None:
        return made(CHAMPION, "no champion yet: the first registered version becomes champion")
    if champion.value is None or not math.isfinite(champion.value):
        why = champion.why_not or "its figure on this holdout is unknown"
        return made(CHALLENGER, f"champion v{champion.version} cannot be compared on this holdout ({why}); kept")
    versus = f"{metric} {new_value:.6g} vs champion v{champion.version} {champion.value:.6g} ({champion.how})"
    if gain is None or not math.isfinite(gain.low):
        return made(CHALLENGER, f"{versus}: no paired interval of the gain on these rows; champion kept")
    bar = f"zero and {need:g}" if need > 0 else "zero"
    evidence = gain.words()
    if gain_shown(gain.low, need):
        return made(CHAMPION, f"{versus}: better by {gain.gain:.4g}; {evidence}: its lower bound clears {bar}")
    if gain.gain > 0:
        return made(
            CHALLENGER,
            f"{versus}: better by {gain.gain:.4g} on these rows, but {evidence}: its lower bound does not clear "
            f"{bar}, so the gain is not shown; champion kept",
        )
    words = "no better" if gain.gain == 0 else f"worse by {-gain.gain:.4g}"
    return made(CHALLENGER, f"{versus}: {words}; {evidence}; champion kept")


def decision_stands(recorded: Decision, version: str, champion_version: str | None, rule: Rule) -> bool:
    """Whether the decision recorded for registered ``version`` is still the gate's answer for the same model on the
    same holdout: the rule is unchanged (its metric, minimum and level) and so is the champion it was judged
    against. A version made champion stands while it holds the alias (``champion_version``, None when no version
    does); a challenger while the champion it lost to still holds it.
    """
    if (recorded.metric, recorded.min_improvement, recorded.level) != (rule.metric, rule.min_improvement, rule.level):
        return False
    if recorded.alias == CHAMPION:
        return champion_version == version
    return champion_version == recorded.champion_version
