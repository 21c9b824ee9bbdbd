"""The model registry as both training stages and the score stage use it.

Training (``judge``): every run is judged against the version holding ``champion``, on the run's own holdout, by
the pure gate in ``models.gate``; the stage supplies only how to get the champion's figure on these rows. A run
trained as of a date before the champion's training date is a **back-fill** (an old week's list, rebuilt as it
would have looked then): it is registered, tagged ``backfill``, and moves neither ``champion`` nor
``challenger``, which belong to the real candidates.

Scoring (``serving``): the week's customers are scored by the pinned version, else the champion, else (no
registry, no champion, or a champion trained on history after the scoring date) by the model the training
stage left in the workspace, if it was trained as of the scoring date or earlier. Later data never scores an
earlier week.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping

from features.errors import InputError
from models import gate
from pipeline import tracking

log = logging.getLogger("registry")

TRAINED_AS_OF = "trained_as_of"
BACKFILL = "backfill"


def trained_as_of(version: tracking.RegisteredVersion) -> dt.date | None:
    """The training date of a registered version: the first day its models did not see (None if untagged).

    Versions registered before training and scoring were separate stages carry ``scoring_cutoff`` (the last day
    they saw) instead.
    """
    if TRAINED_AS_OF in version.tags:
        return dt.date.fromisoformat(version.tags[TRAINED_AS_OF])
    if "scoring_cutoff" in version.tags:
        return dt.date.fromisoformat(version.tags["scoring_cutoff"]) + dt.timedelta(days=1)
    return None


@dataclasses.dataclass(frozen=True)
class Judgement:
    """What the gate made of a training run: the decision (None for a back-fill, which takes no alias), the tags
    its version carries, and the version already holding this very model (then nothing is registered)."""

    model_name: str
    decision: gate.Decision | None
    version_tags: dict[str, str]
    reused: tracking.RegisteredVersion | None

    @property
    def backfill(self) -> bool:
        return self.version_tags.get(BACKFILL) == "true"

    def as_dict(self) -> dict[str, object]:
        """The registry section of a training stage's metrics."""
        if self.decision is not None:
            return {"model_name": self.model_name, **self.decision.as_dict()}
        reason = "back-fill: trained before the champion's training date; no alias moves" if self.backfill else ""
        return {"model_name": self.model_name, "alias": None, "reason": reason or "not tracked: no registry"}


def untracked(name: str) -> Judgement:
    return Judgement(name, None, {}, None)


def judge(
    name: str,
    *,
    as_of: dt.date,
    model_sha: str,
    holdout_sha: str,
    figures: Mapping[str, float],
    rule: gate.Rule,
    champion_figure: Callable[[tracking.RegisteredVersion], gate.ChampionFigure],
    tags: Mapping[str, str],
) -> Judgement:
    """Judge this run's model (trained as of ``as_of``, its holdout ``figures``) against the champion of ``name`` by
    ``rule``; ``champion_figure`` re-scores a registered version on this run's holdout rows, with the paired gain.

    A rerun that trained this very model on this holdout reuses its version and recorded decision while that
    decision stands (``gate.decision_stands``); a back-fill reuses its back-fill version.
    """
    version_tags = {
        "model.sha": model_sha,
        "holdout.sha": holdout_sha,
        TRAINED_AS_OF: str(as_of),
        **tags,
        **{f"holdout.{k}": repr(float(v)) for k, v in figures.items()},
    }
    same = {"model.sha": model_sha, "holdout.sha": holdout_sha, TRAINED_AS_OF: str(as_of)}
    current = tracking.registered_version(name, alias=gate.CHAMPION)
    its_date = trained_as_of(current) if current else None
    if current is not None and its_date is not None and its_date > as_of:
        log.info(
            "%s: trained as of %s, before champion v%s's %s: a back-fill",
            name,
            as_of,
            current.version,
            its_date,
        )
        return Judgement(
            name, None, {**version_tags, BACKFILL: "true"}, tracking.find_version(name, {**same, BACKFILL: "true"})
        )
    standing = tracking.standing_version(name, same, current, rule)
    if standing:
        reused, decision = standing
        log.info("%s: v%s is this model on this holdout; its decision stands", name, reused.version)
        return Judgement(name, decision, version_tags, reused)
    figure = champion_figure(current) if current else None
    decision = gate.decide(rule, float(figures[rule.metric]), figure)
    log.info("%s: this run's model becomes %s: %s", name, decision.alias, decision.reason)
    return Judgement(name, decision, version_tags, None)


def record(judgement: Judgement, model_uri: str) -> None:
    """Register the active run's model as ``judge`` decided (a back-fill with no alias), inside its MLflow run."""
    if judgement.decision is not None:
        tracking.register_decision(
            judgement.model_name, model_uri, judgement.decision, judgement.version_tags, judgement.reused
        )
    elif judgement.backfill:
        tracking.register_backfill(judgement.model_name, model_uri, judgement.version_tags, judgement.reused)


@dataclasses.dataclass(frozen=True)
class Served:
    """The model that scores this week: a registered version, or (``version`` None) the workspace's trained one."""

    model_name: str
    version: tracking.RegisteredVersion | None
    source: str  # pinned | champion | training run
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "model_name": self.model_name,
            "source": self.source,
            "version": self.version.version if self.version else None,
        }
        if self.note:
            out["note"] = self.note
        return out


def serving(
    name: str,
    *,
    pinned: int | None,
    pin_key: str,
    scoring_as_of: dt.date,
    workspace_as_of: dt.date,
    tracked: bool,
) -> Served:
    """The model that scores customers as of ``scoring_as_of`` (see the module docstring).

    ``workspace_as_of`` is the training date of the model the training stage left in the workspace.
    """

    def too_late(when: dt.date | None) -> bool:
        return when is not None and when > scoring_as_of

    if not tracked and pinned is not None:
        raise InputError(f"{pin_key}={pinned} names a registered version, but this run reads no registry; set null")
    if pinned is not None:
        version = tracking.pinned_version(name, pinned, pin_key)
        if too_late(trained_as_of(version)):
            raise InputError(
                f"{pin_key}={pinned} cannot score as of {scoring_as_of}: it was trained as of "
                f"{trained_as_of(version)}, later; pin an older version or set null"
            )
        return Served(name, version, "pinned")
    champion = tracking.registered_version(name, alias=gate.CHAMPION) if tracked else None
    if champion is not None and not too_late(trained_as_of(champion)):
        return Served(name, champion, "champion")
    note = (
        f"champion v{champion.version} was trained as of {trained_as_of(champion)}, after this week"
        if champion is not None
        else ("no registry" if not tracked else "no champion yet")
    )
    if too_late(workspace_as_of):
        raise InputError(
            f"score: the models were trained as of {workspace_as_of}, after score.as_of {scoring_as_of}, and no "
            f"registered model is older ({note}); back-fill that week with `make weekly AS_OF={scoring_as_of}`, "
            "which trains models as of it"
        )
    if champion is not None:
        log.warning("%s: %s; the training run's model (as of %s) scores instead", name, note, workspace_as_of)
    return Served(name, None, "training run", note)
