"""MLflow: the only module that imports it.

Runs go to ``$MLFLOW_TRACKING_URI`` when set, else to ``sqlite:///mlflow.db`` in the working directory (the
project root under DVC), in the experiment named by ``base.mlflow_experiment``. Every run is tagged with the
stage, the git commit and a fingerprint of the data it read, so a reviewer can tell which code saw which data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import mlflow.lightgbm
import mlflow.pyfunc
import pandas as pd
import pyarrow.parquet as pq
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.pyfunc import PythonModel

from features.errors import InputError
from models.gate import CHALLENGER, CHAMPION, Decision, Rule, decision_stands

log = logging.getLogger("tracking")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROOT = Path(__file__).resolve().parent.parent


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def git_commit() -> str:
    """The commit of the working tree, ``-dirty`` with uncommitted changes to tracked files; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        # dvc.lock is rewritten by `dvc repro` itself as earlier stages finish: it does not make the code dirty
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def data_fingerprint(path: Path) -> dict[str, str]:
    """Row count and SHA-256 of a Parquet file's bytes: equal fingerprints mean the same input data."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {
        "data.rows": str(pq.read_metadata(path).num_rows),
        "data.sha256": digest.hexdigest(),
        "data.path": str(path),
    }


def flatten(values: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested mappings as one level of ``a/b/c`` keys (MLflow keys cannot nest)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def experiment_tags() -> dict[str, str]:
    """``dvc.experiment`` and ``dvc.baseline`` when the stage runs under `dvc exp run` (DVC sets both variables)."""
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One stage run as a reviewer compares it: when, which code, which experiment, its params and metrics."""

    run_id: str
    started: str
    git_commit: str
    experiment: str
    params: dict[str, str]
    metrics: dict[str, float]
    registry: str = ""  # "v3 champion": the version this run registered and the alias the gate gave it
    evidence: str = ""  # "[+0.0031, +0.0112] vs v2": the gain's interval over the champion it was judged against
    serving: str = ""  # a backtest run: the churn scorer it chose to serve, and why
    clv_serving: str = ""  # a backtest run: the CLV it ranks best by the gate's rule, and why


def recent_stage_runs(experiment: str, stage: str, last: int) -> list[RunSummary]:
    """The ``last`` finished runs of ``stage`` in ``experiment``, newest first (none if the experiment is absent)."""
    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=last,
        output_format="list",
    )
    return [
        RunSummary(
            run_id=r.info.run_id,
            started=pd.Timestamp(r.info.start_time, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"),
            git_commit=r.data.tags.get("git_commit", "unknown"),
            experiment=r.data.tags.get("dvc.experiment", ""),
            params=dict(r.data.params),
            metrics=dict(r.data.metrics),
            registry=(
                f"v{r.data.tags['registry.version']} {r.data.tags.get('registry.alias', '')}".strip()
                if "registry.version" in r.data.tags
                else ""
            ),
            evidence=_evidence(r.data.tags),
            serving=" : ".join(
                r.data.tags[k] for k in ("backtest.serving", "backtest.serving_reason") if k in r.data.tags
            ),
            clv_serving=" : ".join(
                r.data.tags[k] for k in ("backtest.clv_serving", "backtest.clv_serving_reason") if k in r.data.tags
            ),
        )
        for r in runs
    ]


def _evidence(tags: Mapping[str, str]) -> str:
    """The gain's interval over the champion as a run's tags record it; empty when it was not judged against one."""
    low, high = tags.get("registry.gain_low"), tags.get("registry.gain_high")
    if not low or not high:
        return ""
    level = float(tags.get("registry.level", "nan"))
    return f"[{float(low):+.4f}, {float(high):+.4f}] ({level:.0%}) vs v{tags.get('registry.champion_version', '?')}"


def dvc_invocation() -> str | None:
    """``<pid>.<start time>`` of the `dvc repro` / `dvc exp run` process running this stage; None when run by hand.

    Every stage of one `dvc repro` is a child process of the same dvc process, so this names the pipeline run.
    Linux only (it reads /proc); elsewhere stages log stand-alone runs.
    """
    pid = os.getppid()
    for _ in range(10):  # dvc -> shell -> python: a few levels at most
        if pid <= 1:
            return None
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        if any(Path(a.decode(errors="replace")).name == "dvc" for a in args[:3]):
            return f"{pid}.{fields[19]}"
        pid = int(fields[1])
    return None


def lock_hashes(root: Path = ROOT) -> dict[str, str]:
    """``dvc.lock``'s md5 of every file or folder an already-finished stage produced, by path."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except yaml.YAMLError:
        return {}
    return {o["path"]: o.get("md5", "") for entry in stages.values() for o in entry.get("outs", []) if "path" in o}


def input_tags(inputs: Sequence[Path]) -> dict[str, str]:
    """``dvc.lock.<path>`` = the md5 dvc.lock recorded for each input this stage read (when DVC produced it)."""
    hashes = lock_hashes()
    tags = {}
    for path in inputs:
        try:
            key = str(Path(path).resolve().relative_to(ROOT))
        except ValueError:
            continue
        if key in hashes:
            tags[f"dvc.lock.{key}"] = hashes[key]
    return tags


def pipeline_parent(experiment_id: str, invocation: str) -> str:
    """The parent run of this `dvc repro` (created by its first tracked stage): one parent, a child per stage."""
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`pipeline.invocation` = '{invocation}'", max_results=1
    )
    if found:
        return str(found[0].info.run_id)
    commit = git_commit()
    exp = experiment_tags()
    run = client.create_run(
        experiment_id,
        run_name=exp.get("dvc.experiment", "dvc repro"),
        tags={
            "stage": "pipeline",
            "pipeline.invocation": invocation,
            "git_commit": commit,
            "git_dirty": str(commit.endswith("-dirty")).lower(),
            **exp,
        },
    )
    params_file = ROOT / "params.yaml"
    if params_file.is_file():
        client.log_artifact(run.info.run_id, str(params_file))
    client.set_terminated(run.info.run_id)  # it holds no work of its own; the stages are its children
    return str(run.info.run_id)


@contextlib.contextmanager
def stage_run(
    experiment: str,
    stage: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    inputs: Sequence[Path] = (),
) -> Iterator[str]:
    """An MLflow run for one execution of a stage, with its params section logged; yields the run id.

    Under `dvc repro` the run is a child of the pipeline's parent run. Tags: stage, git commit and dirty flag, the
    DVC experiment name, and the dvc.lock hash of each of ``inputs``.
    """
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    invocation = dvc_invocation()
    parent = {"mlflow.parentRunId": pipeline_parent(experiment_id, invocation)} if invocation else {}
    with mlflow.start_run(run_name=stage, tags=parent) as run:
        commit = git_commit()
        mlflow.set_tags(
            {
                "stage": stage,
                "git_commit": commit,
                "git_dirty": str(commit.endswith("-dirty")).lower(),
                **experiment_tags(),
                **input_tags(inputs),
                **tags,
            }
        )
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list | tuple) else v for k, v in flatten(params).items()})
        yield run.info.run_id
    log.info("MLflow run %s in experiment '%s' at %s", run.info.run_id, experiment, tracking_uri())


def log_metrics(metrics: Mapping[str, Any]) -> None:
    """Every numeric leaf of ``metrics`` (nested keys joined by '/'); None and text are skipped."""
    flat = {
        k: float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v  # v == v drops NaN
    }
    mlflow.log_metrics(flat)


def log_artifacts(paths: Mapping[str, Path]) -> None:
    """Files or folders, each under the artifact folder named by its key."""
    for folder, path in paths.items():
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=folder)
        else:
            mlflow.log_artifact(str(path), artifact_path=folder)


class ClvPyfunc(PythonModel):
    """The fitted CLV models as a pyfunc: a features table in, the clv stage's value columns out.

    Input: ``frequency``, ``recency``, ``T`` (in the time unit it was fitted in) and ``monetary_value``.
    The parameters and value settings are read from the ``clv_params`` artifact (artifacts/clv/params.json).
    """

    def load_context(self, context: Any) -> None:
        from models.purchases import purchase_model_from_params
        from models.value import ValueSettings

        spec = json.loads(Path(context.artifacts["clv_params"]).read_text(encoding="utf-8"))["scoring"]
        self._purchases = purchase_model_from_params(spec["model"], spec["purchases"]["params"])
        self._spend = spec["gamma_gamma"]["params"]
        self._settings = ValueSettings(**spec["settings"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from models.value import score

        cols = ["frequency", "recency", "T", "monetary_value"]
        missing = [c for c in cols if c not in model_input.columns]
        if missing:
            raise ValueError(f"clv model input lacks column(s) {missing}; it needs {cols}")
        out = score(
            self._purchases,
            self._spend,
            model_input["frequency"].to_numpy(),
            model_input["recency"].to_numpy(),
            model_input["T"].to_numpy(),
            model_input["monetary_value"].to_numpy(),
            self._settings,
        )
        return pd.DataFrame(out, index=model_input.index)


def log_clv_model(params_json: Path, example: pd.DataFrame) -> str:
    """Log the CLV pyfunc with its parameters file, a signature from ``example``, and pinned requirements."""
    model = ClvPyfunc()
    model.load_context(type("Ctx", (), {"artifacts": {"clv_params": str(params_json)}})())
    signature = infer_signature(example, model.predict(None, example))
    pins = [f"{pkg}=={metadata.version(pkg)}" for pkg in ("lifetimes", "pandas", "numpy", "scipy", "mlflow")]
    info = mlflow.pyfunc.log_model(
        name="clv_model",
        python_model=ClvPyfunc(),
        artifacts={"clv_params": str(params_json)},
        code_paths=[str(ROOT / "features"), str(ROOT / "models"), str(ROOT / "pipeline")],
        signature=signature,
        input_example=example.head(5),
        pip_requirements=pins,
    )
    return str(info.model_uri)


def log_churn_model(booster: lgb.Booster, best_iteration: int, example: pd.DataFrame) -> str:
    """Log the churn trees with MLflow's LightGBM flavour: signature and input example from ``example``.

    The flavour predicts the *uncalibrated* probability; the calibrator is logged beside it (churn/calibrator.json)
    and the stage's ``p_churn`` is the calibrator applied to this output.
    """
    booster.best_iteration = best_iteration  # saved models keep only the early-stopped trees
    signature = infer_signature(example, booster.predict(example, num_iteration=best_iteration))
    info = mlflow.lightgbm.log_model(
        booster,
        name="churn_model",
        signature=signature,
        input_example=example.head(5),
    )
    return str(info.model_uri)


# --- the model registry ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model: its number, the run that logged it, its tags and aliases."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


def registered_name(model_name: str, source: str) -> str:
    """The registered model for ``model_name`` trained on ``source`` (``ingest.source``): one champion per data source.

    A champion is only ever judged against models of the same log: ``churn-clv-churn`` on the builtin CDNOW log is
    ``churn-clv-churn-cdnow``; on ``data/online_retail_2011.csv.gz`` it is ``churn-clv-churn-online_retail_2011``.
    """
    stem = Path(source).name
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{model_name}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem) or 'log'}"


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def registered_version(name: str, *, alias: str | None = None, version: int | None = None) -> RegisteredVersion | None:
    """The version of ``name`` holding ``alias``, or version number ``version``; None if there is none (yet)."""
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    return _registered(mv)


def _registered(mv: Any) -> RegisteredVersion:
    return RegisteredVersion(
        name=mv.name,
        version=str(mv.version),
        run_id=str(mv.run_id or mv.tags.get("run_id", "")),
        tags=dict(mv.tags),
        aliases=tuple(mv.aliases),
    )


def find_version(name: str, tags: Mapping[str, str]) -> RegisteredVersion | None:
    """The latest version of ``name`` that carries every one of ``tags`` (e.g. the same model and holdout), or None.

    ``tags`` values are fingerprints and dates: letters, digits, '-' and '.' only.
    """
    unsafe = {k: v for k, v in tags.items() if not re.fullmatch(r"[A-Za-z0-9_.-]*", f"{k}{v}")}
    if unsafe:
        raise ValueError(f"find_version: tags {unsafe} hold characters a registry search cannot quote")
    mlflow.set_tracking_uri(tracking_uri())
    query = " and ".join([f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    found = mlflow.MlflowClient().search_model_versions(query, max_results=1, order_by=["version_number DESC"])
    return _registered(found[0]) if found else None


def pinned_version(name: str, version: int, key: str) -> RegisteredVersion:
    """The registered version that ``key`` (e.g. ``churn.registry.score_version``) pins; a one-line error if absent."""
    found = registered_version(name, version=version)
    if found is None:
        raise InputError(f"{key}={version}: {name} has no such version; set null to score with the champion")
    return found


def register(model_uri: str, name: str, alias: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``name``, give it ``alias`` and ``tags``; returns the version.

    Aliases are unique per model: moving ``champion`` (or ``challenger``) to this version takes it from the last.
    """
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description="Registered by the churn-clv pipeline; see its README.")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):  # an earlier run registered it: fine
            raise
    mv = mlflow.register_model(model_uri, name, tags=dict(tags))
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def decision_tags(name: str, decision: Decision) -> dict[str, str]:
    """The gate's decision as tags: ``registry.alias``, ``registry.metric``, both figures and the reason."""
    return {
        "registry.model_name": name,
        "registry.alias": decision.alias,
        "registry.metric": decision.metric,
        "registry.min_improvement": repr(decision.min_improvement),
        "registry.level": repr(decision.level),
        "registry.new_value": repr(decision.new_value),
        "registry.champion_version": decision.champion_version or "",
        "registry.champion_value": _optional(decision.champion_value),
        "registry.gain_low": _optional(decision.gain_low),
        "registry.gain_high": _optional(decision.gain_high),
        "registry.reason": decision.reason,
    }


def _optional(value: float | None) -> str:
    return "" if value is None else repr(value)


def _read_optional(text: str) -> float | None:
    return float(text) if text else None


def recorded_decision(version: RegisteredVersion, level: float) -> Decision | None:
    """The gate's decision as ``decision_tags`` recorded it on ``version``; None if it holds no complete record.

    A version judged before the gate asked for a paired interval has no ``registry.level`` (nor the interval):
    its decision is read as made at ``level``, so that retraining that very model reuses the version instead of
    judging it against itself, a tie that would register a duplicate as ``challenger``."""
    tags = version.tags
    try:
        alias = tags["registry.alias"]
        if alias not in (CHAMPION, CHALLENGER):
            return None
        return Decision(
            alias=CHAMPION if alias == CHAMPION else CHALLENGER,
            metric=tags["registry.metric"],
            min_improvement=float(tags["registry.min_improvement"]),
            level=float(tags.get("registry.level", repr(level))),
            new_value=float(tags["registry.new_value"]),
            champion_version=tags["registry.champion_version"] or None,
            champion_value=_read_optional(tags["registry.champion_value"]),
            gain_low=_read_optional(tags.get("registry.gain_low", "")),
            gain_high=_read_optional(tags.get("registry.gain_high", "")),
            reason=tags["registry.reason"],
        )
    except (KeyError, ValueError):
        return None


def standing_version(
    name: str, tags: Mapping[str, str], champion: RegisteredVersion | None, rule: Rule
) -> tuple[RegisteredVersion, Decision] | None:
    """The version of ``name`` that already holds this model judged on this holdout (``tags``: its ``model.sha``
    and ``holdout.sha``) and its recorded decision, if that decision still stands against ``champion`` (the version
    holding the alias now) under the gate's ``rule`` (``models.gate.decision_stands``)."""
    found = find_version(name, tags)
    recorded = recorded_decision(found, rule.level) if found else None
    if found is None or recorded is None:
        return None
    if not decision_stands(recorded, found.version, champion.version if champion else None, rule):
        return None
    return found, recorded


def register_decision(
    name: str,
    model_uri: str,
    decision: Decision,
    version_tags: Mapping[str, str],
    reused: RegisteredVersion | None = None,
) -> str:
    """Register the active run's model with the gate's alias; tag the run and the version with the decision.

    ``reused`` is a version already holding this very model, judged on the same holdout: nothing is registered and
    no alias moves; the run is tagged with that version (``registry.reused``) and its recorded decision.
    """
    tags = decision_tags(name, decision)
    if reused is None:
        version = register(model_uri, name, decision.alias, {**version_tags, **tags, "run_id": _active_run_id()})
        log.info("registered %s v%s as %s", name, version, decision.alias)
    else:
        version = reused.version
        log.info("%s v%s already holds this model, judged on the same holdout: nothing registered", name, version)
    mlflow.set_tags(
        {
            **tags,
            "registry.version": version,
            "registry.reused": str(reused is not None).lower(),
        }
    )
    return version


def register_backfill(
    name: str, model_uri: str, version_tags: Mapping[str, str], reused: RegisteredVersion | None = None
) -> str:
    """Register the active run's back-fill model with no alias (``reused``: a version already holding it)."""
    if reused is None:
        mlflow.set_tracking_uri(tracking_uri())
        mv = mlflow.register_model(model_uri, name, tags={**version_tags, "run_id": _active_run_id()})
        version = str(mv.version)
        log.info("registered %s v%s as a back-fill (no alias)", name, version)
    else:
        version = reused.version
        log.info("%s v%s already holds this back-fill model: nothing registered", name, version)
    mlflow.set_tags(
        {"registry.version": version, "registry.reused": str(reused is not None).lower(), "backfill": "true"}
    )
    return version


def _active_run_id() -> str:
    run = mlflow.active_run()
    return run.info.run_id if run else ""


def load_lightgbm(name: str, version: str) -> lgb.Booster:
    """The booster of a registered version of a churn model (MLflow's LightGBM flavour)."""
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.lightgbm.load_model(f"models:/{name}/{version}")


class MissingArtifact(Exception):
    """A run has no artifact at the path asked for (or the store could not hand it over)."""


def run_artifact(run_id: str, path: str, dst: Path) -> Path:
    """Download one artifact of a run (e.g. ``churn/calibrator.json``) into ``dst``; returns the local file."""
    mlflow.set_tracking_uri(tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar per file is noise in logs
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))
    except (MlflowException, OSError) as exc:
        raise MissingArtifact(f"run {run_id} has no artifact {path}") from exc
    if not local.is_file():
        raise MissingArtifact(f"run {run_id} has no artifact {path}")
    return local
