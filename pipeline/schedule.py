"""``make weekly`` and ``make train``: which dates a run moves, so that only what must rerun reruns.

A week's list needs a new scoring date (``score.as_of``) only: DVC then reruns the snapshot, score and report
stages, and no training stage. The models are retrained (``train.as_of`` moves to the week) only when

* there are no trained models in the workspace yet, or ``make train`` asks for it;
* they are older than ``train.max_model_age_days`` at the scoring date;
* the week is before their training date: a back-fill, which must not see later data. Its models are trained
  as of that week, registered as back-fills, and move no alias (``pipeline.registry``).

Changed training inputs (a new log, new params, new code) retrain through DVC itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from features.errors import InputError
from pipeline.config import BaseConfig, ConfigError, TrainConfig, _coerce, load_params, section, set_as_of
from pipeline.weeks import iso_week

# Where the training stages record the date their models were trained as of.
TRAINED_AS_OF = (Path("metrics/clv.json"), Path("metrics/churn.json"))
TRANSACTIONS = Path("data/transactions.parquet")


def default_scoring_date(params: dict[str, Any], transactions: Path = TRANSACTIONS) -> dt.date | None:
    """What a null ``score.as_of`` means: the day after the clean log's last transaction day; None before the
    first ingest (there are no models to age then either)."""
    if not transactions.is_file():
        return None
    from pipeline.engine import backend, open_transactions  # the engine only when there is a log to read
    from pipeline.features import date_bounds

    _, last = date_bounds(open_transactions(backend(section(params, "base", BaseConfig)), transactions))
    return last + dt.timedelta(days=1)


def trained_as_of(paths: tuple[Path, ...] = TRAINED_AS_OF) -> dt.date | None:
    """The training date of the workspace's models (the older of the two); None if either was never trained."""
    dates = []
    for path in paths:
        try:
            dates.append(
                dt.date.fromisoformat(json.loads(path.read_text(encoding="utf-8"))["training"]["trained_as_of"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return min(dates)


def plan(as_of: dt.date | None, trained: dt.date | None, max_age_days: int, *, force: bool) -> tuple[bool, str]:
    """Whether to train as of ``as_of``, and why, in one line."""
    if force:
        return True, "training as asked (make train)"
    if trained is None:
        return True, "no trained models yet"
    if as_of is None:
        return False, f"scoring with the models trained as of {trained}"
    if as_of < trained:
        return True, f"back-fill: {as_of} is before the models' training date {trained}; training as of {as_of}"
    age = (as_of - trained).days
    if age > max_age_days:
        return True, f"the models are {age} days old (train.max_model_age_days {max_age_days}); retraining"
    return False, f"scoring with the models trained as of {trained} ({age} days old)"


def experiment_name(scoring: dt.date | None, existing: set[str], *, train: bool) -> str:
    """The name of a week's ``dvc exp run``: ``week-1998-W10`` (``train-`` when it retrains on purpose), with
    ``-2``, ``-3``... when this commit already has an experiment of that name (a week run again)."""
    base = f"{'train' if train else 'week'}-{iso_week(scoring) if scoring is not None else 'unscored'}"
    name, n = base, 1
    while name in existing:
        n += 1
        name = f"{base}-{n}"
    return name


def existing_experiments() -> set[str]:
    """The names of this commit's experiments (``dvc exp list --name-only``); none when DVC cannot list them."""
    done = subprocess.run(["dvc", "exp", "list", "--name-only"], capture_output=True, text=True, check=False)
    return set(done.stdout.split()) if done.returncode == 0 else set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Set score.as_of (and train.as_of when the models must be retrained).")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--as-of", required=True, metavar="YYYY-MM-DD|null")
    parser.add_argument("--train", action="store_true", help="retrain as of the date whatever the models' age")
    parser.add_argument(
        "--name-to", type=Path, metavar="FILE", help="write the name for the week's `dvc exp run -n` to FILE"
    )
    args = parser.parse_args(argv)
    try:
        day = None if args.as_of == "null" else _coerce(args.as_of, dt.date, "AS_OF")
        params = load_params(args.params)
        cfg = section(params, "train", TrainConfig)
        scoring = day if day is not None else default_scoring_date(params)  # null: the models still age
        train, why = plan(scoring, trained_as_of(), cfg.max_model_age_days, force=args.train)
        if train:
            set_as_of(args.params, "train.as_of", day)
        set_as_of(args.params, "score.as_of", day)
        if args.name_to is not None:
            args.name_to.parent.mkdir(parents=True, exist_ok=True)
            args.name_to.write_text(
                experiment_name(scoring, existing_experiments(), train=args.train), encoding="utf-8"
            )
    except (ConfigError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"schedule: {why}")


if __name__ == "__main__":
    main()
