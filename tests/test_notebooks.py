"""The notebooks run from top to bottom on a small real store, and are committed without outputs.

The store is built the way `make run` builds the project's: ingest and features on the builtin CDNOW sample, then the
clv and churn stages twice, the second time with a churn param changed, so the review notebook has two runs of each
stage to compare and a registry decision to explain. Each notebook runs in memory in a ``python3`` kernel of this
interpreter (ipykernel is in the dev extra); the files in notebooks/ are only read, never written.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import nbformat
import pandas as pd
import pytest
import yaml
from nbclient import NotebookClient

from features import schemas as s
from tests.conftest import ROOT, project_params
from tests.stages import run_stages

NOTEBOOKS = ROOT / "notebooks"
EXPLORE = NOTEBOOKS / "01_explore.ipynb"
REVIEW = NOTEBOOKS / "02_model_review.ipynb"
KERNEL_PYTHON = "kernel python: "


@dataclasses.dataclass(frozen=True)
class Store:
    """A project root as `make run` lays it out (data/, metrics/, artifacts/, plots/, mlflow.db, params.yaml)."""

    root: Path
    runs: dict[str, list[mlflow.entities.Run]]  # per stage, newest first

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root}/mlflow.db"


def _run_model_stages(params_file: Path) -> None:
    """The training stages and the week's scoring, with the paths dvc.yaml gives them."""
    run_stages(Path("."), params_file, ("train_clv", "train_churn", "score"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("project")
    params = project_params()
    params["ingest"]["source"] = "cdnow_sample"
    params["clv"]["bootstrap_samples"] = 10
    params["backtest"]["evidence_resamples"] = 200
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.chdir(root)  # MLflow puts run artifacts under ./mlruns: keep them in the temporary project
        run_stages(Path("."), params_file, ("ingest", "features", "snapshot", "backtest"))
        _run_model_stages(params_file)
        params["churn"]["lightgbm"]["num_leaves"] = 7  # the second run: smaller trees
        params_file.write_text(yaml.safe_dump(params))
        _run_model_stages(params_file)

        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        runs = {
            stage: mlflow.search_runs(
                experiment_names=[params["base"]["mlflow_experiment"]],
                filter_string=f"tags.stage = '{stage}'",
                order_by=["attributes.start_time DESC"],
                output_format="list",
            )
            for stage in ("clv", "churn")
        }
        yield Store(root, runs)


def execute(path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str | None) -> nbformat.NotebookNode:
    """Run a copy of the notebook in memory with the inputs pointing at ``root``; the file is not written."""
    # This environment's kernelspec first (a user-wide "python3" could name another interpreter).
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # ipykernel then draws figures inline, as in Jupyter
    monkeypatch.setenv("CHURN_CLV_ROOT", str(root))
    monkeypatch.delenv("CHURN_CLV_PARAMS", raising=False)
    monkeypatch.delenv("CHURN_CLV_LAST_RUNS", raising=False)
    if tracking_uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the notebook's default: <root>/mlflow.db
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(f"import sys\nprint({KERNEL_PYTHON!r} + sys.executable)"))
    # The kernel starts in the temporary project, not in notebooks/: nothing it might write lands in the repo.
    NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(root)}}).execute()
    return notebook


def printed(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text (streams, plain text and markdown), in order."""
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                parts += [out.data[k] for k in ("text/markdown", "text/plain") if k in out.data]
    return "\n".join(parts)


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))


def check_kernel(text: str) -> None:
    """The notebook ran on this interpreter, i.e. the project's virtualenv with its packages."""
    (line,) = [line for line in text.splitlines() if line.startswith(KERNEL_PYTHON)]
    assert line.removeprefix(KERNEL_PYTHON) == sys.executable


@pytest.mark.slow
def test_explore_notebook(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute(EXPLORE, store.root, monkeypatch, store.tracking_uri)
    text = printed(notebook)
    check_kernel(text)
    assert "6,919 clean transaction lines from 2,357 customers" in text
    assert "from 1997-01-01 to 1998-06-30 (UTC)" in text
    assert "ingest of cdnow_sample: 6,919 rows in = 6,919 kept + 0 quarantined" in text
    assert "scoring snapshot as of 1998-06-30: 2,357 customers" in text
    # CDNOW's customers all made their first purchase in the first quarter of 1997 and the log ends in June 1998:
    # three cohorts, months 0 to 17 since acquisition.
    tx = pd.read_parquet(store.root / "data" / "transactions.parquet")
    first = tx[tx[s.AMOUNT] >= 0].groupby(s.CUSTOMER_ID)[s.TS].min().dt.strftime("%Y-%m")
    assert sorted(first.unique()) == ["1997-01", "1997-02", "1997-03"]
    assert "cohort table: 3 cohorts x 18 months since acquisition" in text
    # the label churn rates agree with the features stage's own (metrics/features.json rounds to 6 decimals)
    (gap,) = re.findall(r"differ from metrics/features.json by at most (\S+)", text)
    assert float(gap) < 1e-6
    assert "as of 1998-06-30: repeat-purchase rate" in text
    assert images(notebook) == 3  # RFM histograms, cohorts, KPIs


@pytest.mark.slow
def test_review_notebook(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # without MLFLOW_TRACKING_URI the notebook opens <CHURN_CLV_ROOT>/mlflow.db, as after `make run`
    notebook = execute(REVIEW, store.root, monkeypatch, None)
    text = printed(notebook)
    check_kernel(text)
    for stage in ("clv", "churn"):
        assert len(store.runs[stage]) == 2
        assert f"{stage}: 2 finished run(s), newest first" in text
        for run in store.runs[stage]:
            assert f"  {run.info.run_id} (started" in text  # both runs listed
        # and side by side, in one table: the same log and holdout
        assert re.search(
            rf"## {stage} on `cdnow_sample`, holdout after \d{{4}}-\d\d-\d\d: the last 2 runs, newest first", text
        )
        assert f"{stage} run {store.runs[stage][0].info.run_id[:8]}: model and baselines on its holdout" in text
    assert "| param `churn/lightgbm/num_leaves` | 7 | 15 |" in text
    newest_churn = store.runs["churn"][0].info.run_id[:8]
    for name in ("roc", "pr", "calibration", "lift"):
        assert f"churn run {newest_churn}: plots/{name}.png" in text
    newest_clv = store.runs["clv"][0].info.run_id[:8]
    for name in ("by_frequency", "cumulative", "deciles", "p_alive"):
        assert f"clv run {newest_clv}: plots/{name}.png" in text
    assert images(notebook) == 8
    backtest = json.loads((store.root / "metrics" / "backtest.json").read_text())
    edge = backtest["model_vs_best_rule"]
    assert f"model vs the best rule ({edge['versus']}), ROC-AUC: {edge['pooled_gain']:+.4f}" in text
    assert f"serving the weekly list: {backtest['serving']['scorer']}; {backtest['serving']['reason']}" in text
    assert backtest["origins"][0]["origin"] in text  # the per-origin table
    for stage in ("clv", "churn"):
        newest = store.runs[stage][0]
        tags = newest.data.tags
        if "registry.version" in tags:  # the stages register their models
            name, version, alias = tags["registry.model_name"], tags["registry.version"], tags["registry.alias"]
            assert f"registered {name} v{version} as {alias}, because {tags['registry.reason']}" in text
            holder = mlflow.MlflowClient(store.tracking_uri).get_model_version_by_alias(name, "champion").version
            assert f"champion = v{holder}" in text
        else:
            assert f"note: the newest {stage} run {newest.info.run_id[:8]} carries no registry.* tags" in text


def test_review_notebook_says_when_there_is_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params()))
    notebook = execute(REVIEW, tmp_path, monkeypatch, None)
    text = printed(notebook)
    assert f"note: there is no MLflow store at {tmp_path}/mlflow.db yet" in text
    assert "clv: 0 finished run(s)" in text and "No finished `churn` runs in this store yet" in text
    assert "note: no finished churn run, so no registry decision to review" in text
    assert f"note: no {tmp_path}/metrics/backtest.json yet" in text
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create an empty store


@pytest.mark.parametrize("path", [EXPLORE, REVIEW], ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    dirty = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cell(s) {dirty} hold outputs or execution counts; clear them before committing "
        "(JupyterLab: Edit > Clear Outputs of All Cells, then save)"
    )
