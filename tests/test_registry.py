"""The champion gate: by-hand decisions, and the churn and clv stages against a real MLflow registry."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import norm

from features.errors import InputError
from models import gate, paired
from pipeline import compare, registry, tracking
from tests.conftest import project_params
from tests.stages import run_stages

# --- the decision, by hand ------------------------------------------------------------------------------------


ROC = gate.Rule("roc_auc", 0.002)


def test_first_version_becomes_champion() -> None:
    d = gate.decide(ROC, 0.80, None)
    assert d.alias == "champion" and d.champion_version is None and "no champion yet" in d.reason


def with_gain(metric: str, new: float, champion: float, low: float, high: float) -> gate.ChampionFigure:
    """Champion v3 at ``champion``, the new model at ``new``, and the gain's 95% interval ``[low, high]``."""
    gain = new - champion if gate.higher_is_better(metric) else champion - new
    pair = paired.PairedGain(metric, new, champion, gain, low, high, 0.95, 1000, 5000, 5000)
    return gate.ChampionFigure("3", champion, how="re-scored on these rows", paired=pair)


@pytest.mark.parametrize(
    ("metric", "new", "champion", "low", "high", "alias", "words"),
    [
        ("roc_auc", 0.8100, 0.8000, 0.004, 0.016, "champion", "better by 0.01"),  # the bound clears 0.002
        ("roc_auc", 0.8100, 0.8000, 0.001, 0.019, "challenger", "does not clear zero and 0.002"),  # not by 0.002
        ("roc_auc", 0.8030, 0.8000, -0.004, 0.010, "challenger", "the gain is not shown"),  # +0.003: noise-sized
        ("roc_auc", 0.8000, 0.8000, 0.0, 0.0, "challenger", "no better"),  # a tie never moves the alias
        ("roc_auc", 0.7000, 0.8000, -0.11, -0.09, "challenger", "worse by 0.1"),
        ("purchases_rmse", 0.7000, 0.7100, 0.006, 0.014, "champion", "better by 0.01"),  # lower is better
        ("purchases_rmse", 0.7100, 0.7000, -0.014, -0.006, "challenger", "worse by 0.01"),
    ],
)
def test_the_gain_must_clear_its_noise_and_the_minimum(
    metric: str, new: float, champion: float, low: float, high: float, alias: str, words: str
) -> None:
    d = gate.decide(gate.Rule(metric, 0.002), new, with_gain(metric, new, champion, low, high))
    assert d.alias == alias
    assert words in d.reason and "v3" in d.reason and "95% interval" in d.reason, d.reason
    assert (d.new_value, d.champion_value, d.champion_version, d.gain_low, d.gain_high) == (
        new,
        champion,
        "3",
        low,
        high,
    )


def test_a_champion_that_cannot_be_compared_is_kept() -> None:
    figure = gate.ChampionFigure("2", None, why_not="it was validated on 1998-05-01")
    d = gate.decide(gate.Rule("roc_auc", 0.0), 0.99, figure)
    assert d.alias == "challenger" and "cannot be compared" in d.reason and "1998-05-01" in d.reason
    unpaired = gate.decide(ROC, 0.99, gate.ChampionFigure("2", 0.5, how="its logged figure"))
    assert unpaired.alias == "challenger" and "no paired interval" in unpaired.reason
    assert gate.decide(ROC, math.nan, None).alias == "challenger"
    with pytest.raises(ValueError, match="does not know metric 'accuracy'"):
        gate.Rule("accuracy", 0.0)
    with pytest.raises(ValueError, match="min_improvement must be >= 0"):
        gate.Rule("roc_auc", -0.1)


def test_a_recorded_decision_stands_while_its_champion_and_rule_do() -> None:
    first = gate.decide(ROC, 0.80, None)  # v1: champion, none before it
    assert gate.decision_stands(first, "1", "1", ROC)
    assert not gate.decision_stands(first, "1", "4", ROC)  # v4 has taken the alias since
    assert not gate.decision_stands(first, "1", "1", gate.Rule("roc_auc", 0.01))  # another rule might decide otherwise
    assert not gate.decision_stands(first, "1", "1", gate.Rule("pr_auc", 0.002))
    assert not gate.decision_stands(first, "1", "1", gate.Rule("roc_auc", 0.002, level=0.9))
    lost = gate.decide(ROC, 0.79, with_gain("roc_auc", 0.79, 0.80, -0.02, 0.0))  # v2 loses to v3
    assert gate.decision_stands(lost, "2", "3", ROC)
    assert not gate.decision_stands(lost, "2", "4", ROC)
    unjudged = gate.decide(ROC, math.nan, None)
    assert gate.decision_stands(unjudged, "1", None, ROC)


def test_a_decision_recorded_before_the_paired_interval_still_stands_for_the_same_model() -> None:
    """Versions registered by the point-estimate gate carry no registry.level: retraining that very model must reuse
    the version (read as judged at the rule's level), not judge it against itself and register a duplicate."""
    legacy = {
        "registry.alias": "champion",
        "registry.metric": "roc_auc",
        "registry.min_improvement": "0.002",
        "registry.new_value": "0.84",
        "registry.champion_version": "",
        "registry.champion_value": "",
        "registry.reason": "no champion yet: the first registered version becomes champion",
    }
    version = tracking.RegisteredVersion("m", "1", "run", legacy, ("champion",))
    recorded = tracking.recorded_decision(version, ROC.level)
    assert recorded is not None and recorded.level == 0.95 and recorded.gain_low is None
    assert gate.decision_stands(recorded, "1", "1", ROC)
    assert tracking.recorded_decision(tracking.RegisteredVersion("m", "1", "run", {}, ()), 0.95) is None


def holdouts(
    rng: np.random.Generator, n: int, signal_new: float, signal_champion: float
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Validation rows with churn labels and two models' scores: each is ``signal * churned`` plus normal noise, a
    part of it shared (two models of one log err alike), so a model's population ROC-AUC is Phi(signal / sqrt 2)."""
    while True:
        y = (rng.random(n) < 0.3).astype(np.float64)
        shared = rng.normal(size=n) * np.sqrt(0.6)
        noise = rng.normal(size=(2, n)) * np.sqrt(0.4)
        yield y, signal_new * y + shared + noise[0], signal_champion * y + shared + noise[1]


@pytest.mark.parametrize(("signal_new", "true_gain", "fewest", "most"), [(1.1, 0.0, 0, 3), (1.3, 0.0394, 38, 40)])
def test_a_noise_sized_gain_is_refused_and_a_real_one_accepted(
    signal_new: float, true_gain: float, fewest: int, most: int
) -> None:
    """40 simulated validation cutoffs of 2,000 customers each, the champion's signal 1.1. With no true difference
    the paired bound clears 0.002 on at most 3 (its one-sided error is 2.5%, and the bar is above zero; seen: 2),
    while the point estimate alone clears it on about a third (seen: 15), as the former gate did. A true ROC-AUC
    gain of 0.039 is taken on (nearly) every cutoff (seen: 39). Half that gain was taken on 17 of 40 at this size:
    the gate's power grows with the validation rows."""
    assert norm.cdf(signal_new / np.sqrt(2)) - norm.cdf(1.1 / np.sqrt(2)) == pytest.approx(true_gain, abs=1e-4)
    rng = np.random.default_rng(11)
    rule = gate.Rule("roc_auc", 0.002, resamples=500, seed=4)
    by_point, by_evidence = 0, 0
    for _, (y, new, champion) in zip(range(40), holdouts(rng, 2000, signal_new, 1.1), strict=False):
        pair = rule.evidence(y, new, champion)
        decision = gate.decide(rule, pair.candidate, gate.ChampionFigure("1", pair.reference, paired=pair))
        by_point += pair.gain >= rule.min_improvement
        by_evidence += decision.alias == "champion"
    assert fewest <= by_evidence <= most
    if true_gain == 0:
        assert by_point >= 8  # what the former rule would have promoted: noise


def test_content_fingerprint_sees_every_bit_and_no_key_order() -> None:
    doc = {"params": {"r": 0.2425, "alpha": 4.414}, "trees": "tree\n"}
    assert gate.content_fingerprint(doc) == gate.content_fingerprint({"trees": "tree\n", **doc})
    assert gate.content_fingerprint({**doc, "params": {"r": 0.2425 + 2**-54, "alpha": 4.414}}) != (
        gate.content_fingerprint(doc)
    )


def test_one_registered_model_per_data_source() -> None:
    assert tracking.registered_name("churn-clv-churn", "cdnow") == "churn-clv-churn-cdnow"
    path = "../shared/data/online_retail/online_retail_2010-12-01_2011-12-09.csv.gz"
    assert tracking.registered_name("churn-clv-churn", path) == "churn-clv-churn-online_retail_2010-12-01_2011-12-09"
    assert tracking.registered_name("m", "/data/my log (v2).parquet") == "m-my_log_v2_"


def test_a_pinned_version_without_a_registry_is_an_error_not_ignored() -> None:
    with pytest.raises(InputError, match=r"churn\.registry\.score_version=3 names a registered version, but this run"):
        registry.serving(
            "m",
            pinned=3,
            pin_key="churn.registry.score_version",
            scoring_as_of=dt.date(1998, 3, 9),
            workspace_as_of=dt.date(1998, 3, 2),
            tracked=False,
        )
    served = registry.serving(
        "m",
        pinned=None,
        pin_key="k",
        scoring_as_of=dt.date(1998, 3, 9),
        workspace_as_of=dt.date(1998, 3, 2),
        tracked=False,
    )
    assert (served.version, served.source, served.note) == (None, "training run", "no registry")


def test_holdout_fingerprint_ignores_row_order_and_sees_every_answer() -> None:
    ids = pd.Series(["a", "b", "c"])
    base = gate.holdout_fingerprint("1998-04-01", ids, {"churned": [1, 0, 1]})
    assert gate.holdout_fingerprint("1998-04-01", ids[::-1].reset_index(drop=True), {"churned": [1, 0, 1]}) == base
    assert gate.holdout_fingerprint("1998-04-01", ids, {"churned": [1, 1, 1]}) != base
    assert gate.holdout_fingerprint("1998-04-08", ids, {"churned": [1, 0, 1]}) != base
    assert gate.holdout_fingerprint("1998-04-01", pd.Series(["a", "b", "d"]), {"churned": [1, 0, 1]}) != base


# --- the stages against a registry ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CDNOW sample through every stage but score, built once for the module in a store of its own: each test
    copies it and starts from an empty registry, where the score stage serves the workspace's trained models."""
    d = tmp_path_factory.mktemp("registry")
    params = project_params()
    params["ingest"]["source"] = "cdnow_sample"
    params["clv"]["bootstrap_samples"] = 4
    file = d / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/fixture.db")
        mp.chdir(d)
        run_stages(d, file, ("ingest", "features", "snapshot", "train_clv", "train_churn"))
    return d


Runner = Callable[..., dict[str, Any]]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty MLflow store (tracking and registry) for one test."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow writes run artifacts under ./mlruns: keep them out of the repository
    return uri


def workspace(sample: Path, tmp_path: Path) -> Path:
    d = tmp_path / "project"
    if not d.exists():
        shutil.copytree(sample, d, ignore=shutil.ignore_patterns("fixture.db", "mlruns", "params.yaml"))
    return d


def weekly_run(d: Path, stage: str, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """``stage`` (a training stage) then the score stage with params changed by ``edit``: the training metrics,
    with ``scored_with`` (which version scored the week) and the customers' p_churn and clv."""
    params = project_params()
    params["ingest"]["source"] = "cdnow_sample"
    params["clv"]["bootstrap_samples"] = 4
    params["score"]["churn_scorer"] = "model"  # which model version scores; whether a rule serves is backtest's
    edit(params)
    file = d / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    run_stages(d, file, (stage, "score"))
    kind = "churn" if stage == "train_churn" else "clv"
    out: dict[str, Any] = json.loads((d / f"metrics/{kind}.json").read_text())
    served = json.loads((d / "metrics/score.json").read_text())["served"][kind]
    out["scored_with"] = {"source": served["source"], "version": served["version"]}
    out["p_churn"] = pd.read_parquet(d / "data/churn.parquet").set_index("customer_id")["p_churn"].sort_index()
    out["clv"] = pd.read_parquet(d / "data/clv.parquet").set_index("customer_id")["clv"].sort_index()
    return out


@pytest.fixture
def run_churn(sample: Path, tmp_path: Path, store: str) -> Runner:
    """Trains the churn model and scores the week through their DVC entry points; returns the training metrics."""
    d = workspace(sample, tmp_path)
    return lambda edit=lambda p: None: weekly_run(d, "train_churn", edit)


def weakened(params: dict[str, Any]) -> None:
    """Two-leaf trees and three rounds: a churn model that must lose to the default one."""
    params["churn"]["lightgbm"].update(num_leaves=2, max_rounds=3, early_stopping_rounds=3)


def champion_of(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)


def versions_of(name: str) -> list[str]:
    return sorted(str(mv.version) for mv in mlflow.MlflowClient().search_model_versions(f"name = '{name}'"))


def run_tags(version: str, name: str) -> dict[str, str]:
    mv = mlflow.MlflowClient().get_model_version(name, version)
    return dict(mlflow.MlflowClient().get_run(mv.run_id).data.tags)


@pytest.mark.slow
def test_a_weaker_churn_model_leaves_the_champion_where_it_was(run_churn: Runner) -> None:
    name = project_params()["churn"]["registry"]["model_name"] + "-cdnow_sample"
    first = run_churn()
    assert first["registry"]["alias"] == "champion" and first["scored_with"] == {"source": "champion", "version": "1"}
    assert champion_of(name) == "1"

    weak = run_churn(weakened)
    reg = weak["registry"]
    assert weak["model"]["roc_auc"] < first["model"]["roc_auc"] - 0.01
    assert reg["alias"] == "challenger" and reg["champion_version"] == "1"
    assert reg["champion_value"] == pytest.approx(first["model"]["roc_auc"], abs=1e-6)  # the same holdout's figure
    assert "same holdout" in reg["reason"] and "champion kept" in reg["reason"]
    assert champion_of(name) == "1"
    # the customers were scored by the champion, not by the weak model
    assert weak["scored_with"] == {"source": "champion", "version": "1"}
    pd.testing.assert_series_equal(weak["p_churn"], first["p_churn"])
    tags = run_tags("2", name)
    assert tags["registry.alias"] == "challenger" and tags["run.kind"] == "training"
    table = compare.stage_table(
        "churn", tracking.recent_stage_runs(project_params()["base"]["mlflow_experiment"], "churn", 5)
    )
    registered = next(line for line in table.splitlines() if line.startswith("| registered as"))
    name = "churn-clv-churn-cdnow_sample"  # one registered model per stage and data source
    assert registered == f"| registered as | {name} v2 challenger | {name} v1 champion |"
    gain = next(line for line in table.splitlines() if line.startswith("| gain over the champion"))
    assert gain.startswith("| gain over the champion | [-") and gain.endswith("(95%) vs v1 | - |")
    assert reg["gain_high"] < 0  # the weak model is worse on every resample's 95% range
    assert float(tags["registry.champion_value"]) == pytest.approx(first["model"]["roc_auc"], abs=1e-6)

    # pinning the weak version scores with it. The run trains the first run's model again (registry settings are
    # not model settings): v1 is reused with its decision, and nothing new is registered
    pinned = run_churn(lambda p: p["churn"]["registry"].update(score_version=2))
    assert pinned["scored_with"] == {"source": "pinned", "version": "2"}
    assert not pinned["p_churn"].equals(first["p_churn"])
    assert pinned["registry"] == first["registry"]
    assert champion_of(name) == "1" and versions_of(name) == ["1", "2"]

    with pytest.raises(InputError, match=r"score_version=9: churn-clv-churn-cdnow_sample has no such version"):
        run_churn(lambda p: p["churn"]["registry"].update(score_version=9))


@pytest.mark.slow
def test_a_version_is_loaded_from_plain_numbers_never_from_a_pickle(run_churn: Runner) -> None:
    name = project_params()["churn"]["registry"]["model_name"] + "-cdnow_sample"
    first = run_churn()
    pinned = run_churn(lambda p: p["churn"]["registry"].update(score_version=1))
    assert pinned["scored_with"] == {"source": "pinned", "version": "1"}
    pd.testing.assert_series_equal(pinned["p_churn"], first["p_churn"])  # the JSON calibrator maps the same

    # a version registered before calibrators were JSON: only a pickle beside its trees, which is not loaded
    run_id = mlflow.MlflowClient().get_model_version(name, "1").run_id
    folder = Path(mlflow.MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://")) / "churn"
    (folder / "calibrator.json").unlink()
    (folder / "calibrator.joblib").write_bytes(b"a pickle that would run code when loaded")
    expected = (
        rf"^churn: registered version 1 of {name} has no readable churn/calibrator\.json \(run {run_id} has no "
        r"artifact churn/calibrator\.json\): versions registered before calibrators were stored as JSON are not loaded"
    )
    with pytest.raises(InputError, match=expected):
        run_churn(lambda p: p["churn"]["registry"].update(score_version=1))


@pytest.mark.slow
def test_retraining_the_same_churn_model_registers_nothing(run_churn: Runner) -> None:
    """The same data and settings give the same trees: the rerun reuses v1 and reports its decision, so its metrics
    file is the first one's byte for byte (DVC sees no change) and the registry holds one version."""
    name = project_params()["churn"]["registry"]["model_name"] + "-cdnow_sample"
    first = run_churn()
    again = run_churn()
    assert {k: v for k, v in again.items() if k not in ("p_churn", "clv")} == {
        k: v for k, v in first.items() if k not in ("p_churn", "clv")
    }
    pd.testing.assert_series_equal(again["p_churn"], first["p_churn"], check_exact=True)
    assert again["registry"]["alias"] == "champion" and "no champion yet" in again["registry"]["reason"]
    assert versions_of(name) == ["1"] and champion_of(name) == "1"
    latest = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(project_params()["base"]["mlflow_experiment"]).experiment_id],
        filter_string="tags.stage = 'churn'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert latest.data.tags["registry.version"] == "1" and latest.data.tags["registry.reused"] == "true"


@pytest.mark.slow
def test_a_better_churn_model_takes_the_alias(run_churn: Runner) -> None:
    name = project_params()["churn"]["registry"]["model_name"] + "-cdnow_sample"
    weak = run_churn(weakened)
    assert weak["registry"]["alias"] == "champion"
    better = run_churn()
    assert better["registry"]["alias"] == "champion" and better["registry"]["champion_version"] == "1"
    assert "better by" in better["registry"]["reason"]
    assert champion_of(name) == "2" and better["scored_with"] == {"source": "champion", "version": "2"}
    # v1's "champion" no longer stands now that v2 holds the alias: the same weak model is judged again, and loses
    weak_again = run_churn(weakened)
    assert weak_again["registry"]["alias"] == "challenger" and weak_again["registry"]["champion_version"] == "2"
    assert champion_of(name) == "2" and versions_of(name) == ["1", "2", "3"]


@pytest.mark.slow
def test_a_different_holdout_rescores_the_champion_and_a_later_one_is_not_used(run_churn: Runner) -> None:
    name = project_params()["churn"]["registry"]["model_name"] + "-cdnow_sample"
    first = run_churn()
    # a smaller population: other validation rows, so the champion's logged figure does not apply
    other = run_churn(lambda p: p["churn"].update(population_lookback_days=120))
    reg = other["registry"]
    assert "re-scored on these rows" in reg["reason"]
    assert reg["champion_value"] != pytest.approx(first["model"]["roc_auc"], abs=1e-6)
    assert 0.5 < reg["champion_value"] < 1.0

    # a champion trained on history after this run's training date makes this run a back-fill: registered with
    # no alias, and the champion, trained after this week, does not score it either
    client = mlflow.MlflowClient()
    champ = champion_of(name)
    client.set_model_version_tag(name, champ, "trained_as_of", "1999-04-01")
    aliases = {mv.version: mv.aliases for mv in client.search_model_versions(f"name = '{name}'")}
    late = run_churn()
    assert late["registry"]["alias"] is None and "back-fill" in late["registry"]["reason"]
    assert late["scored_with"] == {"source": "training run", "version": None}
    newest = max(client.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version))
    assert newest.tags["backfill"] == "true" and newest.aliases == []
    assert {mv.version: mv.aliases for mv in client.search_model_versions(f"name = '{name}'")} == {
        **aliases,
        newest.version: [],
    }
    assert champion_of(name) == champ
    # the same back-fill again reuses its version
    assert run_churn()["registry"] == late["registry"] and len(versions_of(name)) == len(aliases) + 1


@pytest.mark.slow
def test_clv_gate_and_scoring_with_the_champion(sample: Path, tmp_path: Path, store: str) -> None:
    d = workspace(sample, tmp_path)

    def run(edit: Callable[[dict[str, Any]], None] = lambda p: None) -> tuple[dict[str, Any], pd.Series]:
        out = weekly_run(d, "train_clv", edit)
        return {k: v for k, v in out.items() if k not in ("p_churn", "clv")}, out["clv"]

    name = project_params()["clv"]["registry"]["model_name"] + "-cdnow_sample"
    # Pareto/NBD alone first: then auto (which picks by the same metric) can only match or beat it
    first, first_clv = run(lambda p: p["clv"].update(model="pareto_nbd"))
    assert first["registry"]["alias"] == "champion" and champion_of(name) == "1"
    second, second_clv = run(lambda p: p["clv"]["registry"].update(min_improvement=1.0))
    reg = second["registry"]
    assert reg["alias"] == "challenger" and reg["champion_version"] == "1" and "same holdout" in reg["reason"]
    assert reg["champion_value"] == pytest.approx(first["model"]["purchases_rmse"], abs=1e-6)
    assert second["scored_with"] == {"source": "champion", "version": "1"}
    pd.testing.assert_series_equal(second_clv, first_clv, rtol=1e-9)  # the champion's stored parameters scored
    assert champion_of(name) == "1"
    # the same fit again: v2 is reused with its decision, and the metrics and parameters files do not change
    params_json = (d / "artifacts/clv/params.json").read_bytes()
    third, third_clv = run(lambda p: p["clv"]["registry"].update(min_improvement=1.0))
    assert third == second and (d / "artifacts/clv/params.json").read_bytes() == params_json
    pd.testing.assert_series_equal(third_clv, second_clv, check_exact=True)
    assert versions_of(name) == ["1", "2"] and champion_of(name) == "1"


@pytest.mark.slow
def test_a_model_of_another_data_source_is_not_judged_against_this_champion(run_churn: Runner) -> None:
    first = run_churn()
    other = run_churn(lambda p: p["ingest"].update(source="exports/other_shop.csv.gz"))
    assert first["registry"]["model_name"] == "churn-clv-churn-cdnow_sample"
    assert other["registry"]["model_name"] == "churn-clv-churn-other_shop"
    assert other["registry"]["alias"] == "champion" and "no champion yet" in other["registry"]["reason"]
    assert champion_of("churn-clv-churn-cdnow_sample") == "1" and champion_of("churn-clv-churn-other_shop") == "1"
