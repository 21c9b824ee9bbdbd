"""The pipeline's stages run in a test folder through the entry points DVC calls, with dvc.yaml's own commands.

A stage's command line is read from dvc.yaml and its project paths (``data/...``, ``artifacts/...``,
``metrics/...``, ``plots/...``, ``reports/...``) are moved under the test's folder, so a test runs exactly what
``dvc repro`` runs and cannot drift from it when a stage gains an input or an output.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from types import ModuleType

import yaml

from pipeline import assign, backtest, churn, clv, features, ingest, measure, report, score, snapshot

ROOT = Path(__file__).resolve().parents[1]
MODULES: dict[str, ModuleType] = {
    "ingest": ingest,
    "features": features,
    "train_clv": clv,
    "train_churn": churn,
    "snapshot": snapshot,
    "score": score,
    "measure": measure,
    "assign": assign,
    "report": report,
    "backtest": backtest,
}
ORDER = tuple(m for m in MODULES if m != "backtest")  # the pipeline every week depends on; the backtest runs apart
PROJECT_FOLDERS = ("data/", "artifacts/", "metrics/", "plots/", "reports/", "campaign/")


def command(stage: str) -> list[str]:
    """The stage's arguments in dvc.yaml, after ``python -m <module>``."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    words = shlex.split(stages[stage]["cmd"])
    assert words[:3] == ["python", "-m", MODULES[stage].__name__], words[:3]
    return words[3:]


def argv(stage: str, folder: Path, params_file: Path) -> list[str]:
    """``command(stage)`` with its project paths under ``folder``, reading ``params_file``."""
    moved = [str(folder / w) if w.startswith(PROJECT_FOLDERS) else w for w in command(stage)]
    return ["--params", str(params_file), *moved]


def run_stage(stage: str, folder: Path, params_file: Path, *extra: str) -> None:
    MODULES[stage].main([*argv(stage, folder, params_file), *extra])


def run_stages(folder: Path, params_file: Path, stages: tuple[str, ...] = ORDER) -> None:
    for stage in stages:
        run_stage(stage, folder, params_file)
