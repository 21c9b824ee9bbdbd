"""Training on a schedule and scoring every week: what `make weekly` retrains, and what a training date lets in."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from features import schemas as s
from pipeline import schedule
from pipeline.config import SCORING_ONLY, load_params, scoring_as_of, training_as_of
from tests.stages import run_stage, run_stages

D = dt.date


@pytest.mark.parametrize(
    ("as_of", "trained", "force", "train", "words"),
    [
        (D(1998, 3, 9), D(1998, 3, 2), False, False, "trained as of 1998-03-02 (7 days old)"),
        (D(1998, 3, 30), D(1998, 3, 2), False, False, "(28 days old)"),  # the limit itself still serves
        (D(1998, 3, 31), D(1998, 3, 2), False, True, "the models are 29 days old"),
        (D(1998, 2, 23), D(1998, 3, 2), False, True, "back-fill: 1998-02-23 is before the models' training date"),
        (D(1998, 3, 9), None, False, True, "no trained models yet"),
        (D(1998, 3, 9), D(1998, 3, 2), True, True, "as asked"),
        (None, D(1998, 3, 2), False, False, "trained as of 1998-03-02"),
    ],
)
def test_weekly_retrains_only_old_models_and_back_fills(
    as_of: dt.date | None, trained: dt.date | None, force: bool, train: bool, words: str
) -> None:
    decided, why = schedule.plan(as_of, trained, 28, force=force)
    assert decided is train and words in why


def test_schedule_moves_only_the_dates_it_must(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[1]
    params = tmp_path / "params.yaml"
    shutil.copy(root / "params.yaml", params)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    schedule.main(["--params", str(params), "--as-of", "1998-03-02"])  # nothing trained here yet: it trains
    assert training_as_of(load_params(params)) == scoring_as_of(load_params(params)) == D(1998, 3, 2)
    for name in ("clv", "churn"):
        (tmp_path / f"metrics/{name}.json").write_text(json.dumps({"training": {"trained_as_of": "1998-03-02"}}))
    schedule.main(["--params", str(params), "--as-of", "1998-03-16"])
    assert (training_as_of(load_params(params)), scoring_as_of(load_params(params))) == (D(1998, 3, 2), D(1998, 3, 16))
    text = params.read_text()
    schedule.main(["--params", str(params), "--as-of", "1998-02-23"])  # a back-fill trains as of its week
    assert (training_as_of(load_params(params)), scoring_as_of(load_params(params))) == (D(1998, 2, 23), D(1998, 2, 23))
    changed = [a for a, b in zip(text.splitlines(), params.read_text().splitlines(), strict=True) if a != b]
    # the two date lines, train's above score's, and no other line of the file
    assert [line.split("#")[0].strip() for line in changed] == ["as_of: '1998-03-02'", "as_of: '1998-03-16'"]


def test_a_null_scoring_date_still_ages_the_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make weekly`` without AS_OF scores as of the day after the log's last purchase: models trained long
    before it are retrained, as they would be with that date given."""
    root = Path(__file__).resolve().parents[1]
    params = tmp_path / "params.yaml"
    shutil.copy(root / "params.yaml", params)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "data").mkdir()
    days = pd.to_datetime(["1998-01-05 10:00", "1998-04-30 23:30"]).tz_localize("UTC")  # the log ends 1998-04-30
    pd.DataFrame({s.CUSTOMER_ID: ["a", "b"], s.TS: days, s.AMOUNT: [10.0, 12.0], s.ORDER_ID: ["1", "2"]}).to_parquet(
        tmp_path / "data/transactions.parquet"
    )
    assert schedule.default_scoring_date(load_params(params)) == D(1998, 5, 1)
    for trained, retrains in (("1998-04-20", False), ("1998-03-02", True)):
        for name in ("clv", "churn"):
            (tmp_path / f"metrics/{name}.json").write_text(json.dumps({"training": {"trained_as_of": trained}}))
        schedule.main(["--params", str(params), "--as-of", "null"])
        said = capsys.readouterr().out
        assert ("60 days old" in said) is retrains and scoring_as_of(load_params(params)) is None
        assert training_as_of(load_params(params)) is None  # null, the latest history, either way


def _train(folder: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
    monkeypatch.chdir(folder)
    file = folder / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    run_stages(folder, file, ("features", "train_clv", "train_churn"))


@pytest.mark.slow
def test_models_trained_as_of_a_date_never_see_a_later_purchase(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained as of 1998-03-02 on the whole log, and on the log cut at that day: the same features, fits and
    trees, to the byte. A purchase after the training date reaches no model (a back-filled week's models)."""
    params["ingest"]["source"] = "cdnow_sample"
    params["clv"]["bootstrap_samples"] = 5
    params["train"]["as_of"] = "1998-03-02"
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    (whole / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage("ingest", whole, whole / "params.yaml")
    tx = pd.read_parquet(whole / "data/transactions.parquet")
    later = tx[s.TS] >= pd.Timestamp("1998-03-02", tz="UTC")
    assert later.sum() > 500  # four months of purchases the models must not see
    (cut / "data").mkdir(parents=True)
    tx[~later].to_parquet(cut / "data/transactions.parquet", index=False)
    _train(whole, params, monkeypatch)
    _train(cut, params, monkeypatch)
    for name in ("data/features.parquet", "artifacts/clv/params.json", "artifacts/churn/model.txt"):
        assert (whole / name).read_bytes() == (cut / name).read_bytes(), name
    for name in ("clv", "churn"):
        assert json.loads((whole / f"metrics/{name}.json").read_text())["training"]["trained_as_of"] == "1998-03-02"
    doc = json.loads((whole / "artifacts/clv/params.json").read_text())
    assert doc["scoring"]["cutoff"] == "1998-03-01" and doc["trained_as_of"] == "1998-03-02"


def test_training_stages_depend_on_every_setting_but_the_scoring_only_ones() -> None:
    """A clv or churn key missing from a training stage's params would not retrain when it changes; a
    scoring-only one listed there would retrain for nothing (a pinned version, the number of reasons)."""
    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    for section, stage in (("clv", "train_clv"), ("churn", "train_churn")):
        keys = {k for k in params[section] if k != "registry"} | {f"registry.{k}" for k in params[section]["registry"]}
        listed = {p.removeprefix(f"{section}.") for p in stages[stage]["params"] if p.startswith(f"{section}.")}
        assert listed == keys - set(SCORING_ONLY[section]), stage
        assert set(SCORING_ONLY[section]) <= keys  # no stale name
        assert section in stages["score"]["params"]  # the score stage reads the whole section
