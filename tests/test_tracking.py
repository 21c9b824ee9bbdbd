"""What a run records about its code (``tracking.code_state``), and the key figures on a `dvc repro`'s parent run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest

from pipeline import tracking

DVC_YAML = """stages:
  train:
    cmd: python train.py
    outs:
      - artifacts/model
    metrics:
      - metrics/train.json
"""


def git(root: Path, *args: str) -> str:
    who = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *who, *args], cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, str]:
    """A git repository with params, dvc.yaml, a lock, a source file and (tracked, as a project might) an output."""
    git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("churn:\n  lightgbm:\n    num_leaves: 15\nbase:\n  seed: 42\n")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "train.py").write_text("print('trained')\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train.json").write_text("{}\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "baseline")
    return tmp_path, git(tmp_path, "rev-parse", "HEAD")


def test_an_experiment_that_changed_only_its_params_reads_as_clean(project: tuple[Path, str]) -> None:
    root, baseline = project
    # what `dvc exp run -S churn.lightgbm.num_leaves=31` leaves in the workspace while its stages run
    (root / "params.yaml").write_text("churn:\n  lightgbm:\n    num_leaves: 31\nbase:\n  seed: 42\n")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "metrics" / "train.json").write_text('{"roc_auc": 0.83}\n')
    env = {"DVC_EXP_NAME": "wider-trees", "DVC_EXP_BASELINE_REV": baseline}

    state = tracking.code_state(root, env)

    assert state == {
        "dvc.experiment": "wider-trees",
        "dvc.baseline": baseline,
        "dvc.changed_params": "churn.lightgbm.num_leaves=31",
        "git_commit": baseline,
        "git_dirty": "false",
    }
    # outside `dvc exp run` the same params change is an uncommitted edit
    plain = tracking.code_state(root, {})
    assert plain["git_commit"] == f"{baseline}-dirty" and plain["git_changed"] == "metrics/train.json, params.yaml"


def test_an_edited_source_file_reads_as_dirty_even_in_an_experiment(project: tuple[Path, str]) -> None:
    root, baseline = project
    (root / "params.yaml").write_text("churn:\n  lightgbm:\n    num_leaves: 31\nbase:\n  seed: 42\n")
    (root / "train.py").write_text("print('trained differently')\n")

    state = tracking.code_state(root, {"DVC_EXP_NAME": "wider-trees", "DVC_EXP_BASELINE_REV": baseline})

    assert state["git_commit"] == f"{baseline}-dirty" and state["git_dirty"] == "true"
    assert state["git_changed"] == "train.py"
    # dvc.lock alone never makes a plain `dvc repro` dirty: DVC rewrites it as stages finish
    git(root, "checkout", "-q", "--", "train.py", "params.yaml")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert tracking.code_state(root, {}) == {"git_commit": baseline, "git_dirty": "false"}


def test_outside_git_the_commit_is_unknown(tmp_path: Path) -> None:
    assert tracking.code_state(tmp_path, {}) == {"git_commit": "unknown", "git_dirty": "unknown"}


def test_changed_params_are_dotted_keys_with_their_new_values() -> None:
    before = {"churn": {"lightgbm": {"num_leaves": 15}}, "score": {"as_of": None, "old": 1}}
    after = {"churn": {"lightgbm": {"num_leaves": 31}}, "score": {"as_of": "1998-03-02"}}
    assert tracking.changed_params(before, after) == [
        "churn.lightgbm.num_leaves=31",
        'score.as_of="1998-03-02"',
        "score.old=(removed)",
    ]


def test_each_stage_logs_its_key_figures_to_the_pipelines_parent_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "dvc_invocation", lambda: "repro-1")  # both stages are of one `dvc repro`
    with tracking.stage_run("key-figures", "churn", {}, {}, source="cdnow", holdout="1998-04-01"):
        tracking.log_key_figures({"churn": {"roc_auc": 0.8305}})
    with tracking.stage_run("key-figures", "score", {}, {}, source="cdnow"):
        tracking.log_key_figures({"score": {"value_at_risk": 123456.78, "customers": 23570}})
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("key-figures")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    assert parent.data.metrics == {"churn/roc_auc": 0.8305, "score/value_at_risk": 123456.78, "score/customers": 23570}
    assert parent.data.tags["data.source"] == "cdnow"
    children = [r for r in runs if r.data.tags.get("stage") != "pipeline"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    # a stage run by hand has no parent: its figures stay in its own run's metrics
    monkeypatch.setattr(tracking, "dvc_invocation", lambda: None)
    with tracking.stage_run("key-figures", "score", {}, {}):
        tracking.log_key_figures({"score": {"customers": 1}})
    assert len(client.search_runs([experiment.experiment_id])) == 4
