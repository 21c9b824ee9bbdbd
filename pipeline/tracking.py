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
import warnings
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
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from features.errors import InputError
from models.gate import CHALLENGER, CHAMPION, Decision, Rule, decision_stands

log = logging.getLogger("tracking")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROOT = Path(__file__).resolve().parent.parent


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# What `dvc exp run` writes into the workspace before and while its stages run: it applies the experiment's params to
# params.yaml (`-S`), and the stages rewrite dvc.lock and their outputs. A difference anywhere else is an edit.
EXPERIMENT_WRITES = ("params.yaml", "dvc.lock")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def dvc_outputs(root: Path = ROOT) -> tuple[str, ...]:
    """Every path dvc.yaml declares as a stage's output, metrics or plots file (relative to ``root``)."""
    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return ()
    paths = []
    for stage in stages.values() if isinstance(stages, dict) else []:
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []) if isinstance(stage, dict) else []:
                path = next(iter(out)) if isinstance(out, dict) else out
                if isinstance(path, str):
                    paths.append(os.path.normpath(path))
    return tuple(paths)


def changed_params(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``key=value`` (dotted keys, as `dvc exp run -S` takes them) for every param whose value differs."""
    old, new = flatten(before, sep="."), flatten(after, sep=".")
    return [
        f"{k}={json.dumps(new[k]) if k in new else '(removed)'}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k, ...) != new.get(k, ...)
    ]


def code_state(root: Path = ROOT, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The git tags of a run: ``git_commit`` (``-dirty`` when a tracked file differs from it), ``git_dirty`` and
    ``git_changed`` (the files that made it dirty); ``unknown`` outside git.

    dvc.lock never makes the code dirty (`dvc repro` rewrites it as stages finish). Under `dvc exp run` (DVC sets
    ``DVC_EXP_BASELINE_REV`` and ``DVC_EXP_NAME``) the tree is compared with the experiment's baseline commit, and
    params.yaml and the stages' outputs do not make it dirty either: DVC itself wrote them there, and it records
    them with the experiment. The tags then name the experiment (``dvc.experiment``), its baseline
    (``dvc.baseline``) and the params it changed (``dvc.changed_params``: ``churn.lightgbm.num_leaves=31``).
    A source file that differs from the baseline is an edit of the code, and reads as dirty.
    """
    name, baseline = env.get("DVC_EXP_NAME", ""), env.get("DVC_EXP_BASELINE_REV", "")
    tags = {"dvc.experiment": name} if name else {}
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
        changed = _git(root, "diff", "--name-only", "--relative", "--no-renames", baseline or "HEAD", "--").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown", **tags}
    allowed: tuple[str, ...] = ("dvc.lock",)
    if baseline:
        tags["dvc.baseline"] = baseline
        allowed = (*EXPERIMENT_WRITES, *dvc_outputs(root))
        try:
            # read as text for the record, not as settings: config.py stays the only reader of the params
            before = yaml.safe_load(_git(root, "show", f"{baseline}:params.yaml")) or {}
            after = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")) or {}
            tags["dvc.changed_params"] = "; ".join(changed_params(before, after))[:4000]
        except (OSError, subprocess.CalledProcessError, yaml.YAMLError, AttributeError):
            tags["dvc.changed_params"] = "unknown"
    edits = [path for path in changed if not any(path == out or path.startswith(out + "/") for out in allowed)]
    tags |= {
        "git_commit": f"{sha}-dirty" if edits else sha,
        "git_dirty": str(bool(edits)).lower(),
        **({"git_changed": ", ".join(edits)[:4000]} if edits else {}),
    }
    return tags


def git_commit() -> str:
    """The commit of the working tree, ``-dirty`` with edited tracked files (``code_state``); else ``unknown``."""
    return code_state()["git_commit"]


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


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One stage run as a reviewer compares it: when, which code, which experiment, its params and metrics."""

    run_id: str
    started: str
    git_commit: str
    experiment: str
    params: dict[str, str]
    metrics: dict[str, float]
    registry: str = ""  # "churn-clv-churn-cdnow v3 champion": the version this run registered and its alias
    evidence: str = ""  # "[+0.0031, +0.0112] vs v2": the gain's interval over the champion it was judged against
    serving: str = ""  # a backtest run: the churn scorer it chose to serve, and why
    clv_serving: str = ""  # a backtest run: the CLV it ranks best by the gate's rule, and why
    source: str = ""  # the data source its inputs were built from (ingest.source); "" if the run did not record it
    model_name: str = ""  # the registered model its version belongs to (one per stage and data source)
    holdout: str = ""  # the cutoff its holdout metrics were measured after; "" for a run without one


# The tag holding the holdout's cutoff, by the stage that logged it: runs logged before ``holdout.cutoff`` have one
# of the older tags, or only the param.
HOLDOUT_TAGS = ("holdout.cutoff", "churn.validation_cutoff")


def _source(tags: Mapping[str, str], params: Mapping[str, str]) -> str:
    """The run's data source: its ``data.source`` tag, else its ``ingest/source`` param."""
    return tags.get("data.source") or params.get("ingest/source", "")


def _holdout(tags: Mapping[str, str], params: Mapping[str, str]) -> str:
    found = next((tags[k] for k in HOLDOUT_TAGS if tags.get(k)), "")
    return found or params.get("clv/calibration_cutoff", "")


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
                " ".join(
                    part
                    for part in (
                        r.data.tags.get("registry.model_name", ""),
                        f"v{r.data.tags['registry.version']}",
                        r.data.tags.get("registry.alias", ""),
                    )
                    if part
                )
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
            source=_source(r.data.tags, r.data.params),
            model_name=r.data.tags.get("registry.model_name", ""),
            holdout=_holdout(r.data.tags, r.data.params),
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


def locked_source(root: Path = ROOT) -> str | None:
    """The ``ingest.source`` dvc.lock recorded for the ingest stage: the log every later stage's inputs were built
    from (DVC runs a stage only once the stages before it are up to date). None without a lock or an ingest stage."""
    lock = root / "dvc.lock"
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        source = stages["ingest"]["params"]["params.yaml"]["ingest"]["source"]
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return None
    return str(source) if source is not None else None


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


def pipeline_parent(experiment_id: str, invocation: str, state: Mapping[str, str], source: str | None) -> str:
    """The parent run of this `dvc repro` (created by its first tracked stage): one parent, a child per stage.

    It carries the code ``state`` (``code_state``), the data ``source``, params.yaml, and the pipeline's key figures
    as each stage logs them (``log_key_figures``).
    """
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`pipeline.invocation` = '{invocation}'", max_results=1
    )
    if found:
        return str(found[0].info.run_id)
    run = client.create_run(
        experiment_id,
        run_name=state.get("dvc.experiment", "dvc repro"),
        tags={
            "stage": "pipeline",
            "pipeline.invocation": invocation,
            **state,
            **({"data.source": source} if source else {}),
        },
    )
    params_file = ROOT / "params.yaml"
    if params_file.is_file():
        client.log_artifact(run.info.run_id, str(params_file))
    client.set_terminated(run.info.run_id)  # it holds no work of its own; each stage's end moves its end time
    return str(run.info.run_id)


@contextlib.contextmanager
def stage_run(
    experiment: str,
    stage: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    inputs: Sequence[Path] = (),
    *,
    source: str | None = None,
    holdout: str | None = None,
) -> Iterator[str]:
    """An MLflow run for one execution of a stage, with its params section logged; yields the run id.

    Under `dvc repro` the run is a child of the pipeline's parent run. Tags: stage, the code state
    (``code_state``: git commit, dirty flag, DVC experiment, its baseline and changed params), the dvc.lock hash of
    each of ``inputs``, ``data.source`` (``source``, the ``ingest.source`` the stage read, which is also logged as
    the param ``ingest/source``; else the one dvc.lock recorded) and ``holdout.cutoff`` (``holdout``: the cutoff its
    holdout metrics were measured after), so runs of different logs or holdouts are never compared as one.
    """
    mlflow.set_tracking_uri(tracking_uri())
    # MLflow draws a progress bar for each artifact it downloads (logging a model validates its input example
    # through one): noise in a stage's log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    state = code_state()
    data_source = source or locked_source()
    invocation = dvc_invocation()
    parent = pipeline_parent(experiment_id, invocation, state, data_source) if invocation else None
    with mlflow.start_run(run_name=stage, tags={"mlflow.parentRunId": parent} if parent else {}) as run:
        mlflow.set_tags(
            {
                "stage": stage,
                **state,
                **({"data.source": data_source} if data_source else {}),
                **({"holdout.cutoff": holdout} if holdout else {}),
                **input_tags(inputs),
                **tags,
            }
        )
        logged = {**params, "ingest": {"source": source}} if source else params
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list | tuple) else v for k, v in flatten(logged).items()})
        yield run.info.run_id
    if parent:
        mlflow.MlflowClient().set_terminated(parent)  # the pipeline ends with its last stage
    log.info("MLflow run %s in experiment '%s' at %s", run.info.run_id, experiment, tracking_uri())


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v  # v == v drops NaN
    }


def log_metrics(metrics: Mapping[str, Any]) -> None:
    """Every numeric leaf of ``metrics`` (nested keys joined by '/'); None and text are skipped."""
    mlflow.log_metrics(_numeric(metrics))


def log_key_figures(figures: Mapping[str, Any]) -> None:
    """Log ``figures`` (numeric leaves, nested keys joined by '/') to the parent run of the `dvc repro` the active
    stage run belongs to, so the parent reads as the pipeline's outcome beside its params.yaml: ``churn/roc_auc``,
    ``clv/gini``, ``score/value_at_risk``, ``campaign/lift``... Each stage logs its own as it finishes; a stage run
    by hand has no parent, and its run already holds the same figures under their stage's names."""
    run = mlflow.active_run()
    if run is None:
        return
    client = mlflow.MlflowClient()
    parent = client.get_run(run.info.run_id).data.tags.get("mlflow.parentRunId")
    if parent:
        for key, value in _numeric(figures).items():
            client.log_metric(parent, key, value)


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


# MLflow's "models from code": the file that builds the CLV pyfunc (``set_clv_model``), stored with the model and
# run when it is loaded, so no pickled Python object is stored or unpickled.
CLV_MODEL_CODE = ROOT / "pipeline" / "clv_pyfunc.py"


def set_clv_model() -> None:
    """Hand MLflow the CLV pyfunc to log or load (what ``CLV_MODEL_CODE`` runs)."""
    mlflow.models.set_model(ClvPyfunc())


def log_clv_model(params_json: Path, example: pd.DataFrame) -> str:
    """Log the CLV pyfunc (from code, ``CLV_MODEL_CODE``) with its parameters file, a signature from ``example``,
    and pinned requirements; returns the LoggedModel's ``models:/<model_id>`` URI."""
    model = ClvPyfunc()
    model.load_context(type("Ctx", (), {"artifacts": {"clv_params": str(params_json)}})())
    signature = infer_signature(example, model.predict(None, example))
    pins = [f"{pkg}=={metadata.version(pkg)}" for pkg in ("lifetimes", "pandas", "numpy", "scipy", "mlflow")]
    info = mlflow.pyfunc.log_model(
        name="clv_model",
        python_model=str(CLV_MODEL_CODE),
        artifacts={"clv_params": str(params_json)},
        code_paths=[str(ROOT / "features"), str(ROOT / "models"), str(ROOT / "pipeline")],
        signature=signature,
        input_example=example.head(5),
        pip_requirements=pins,
    )
    return str(info.model_uri)


def log_churn_model(booster: lgb.Booster, best_iteration: int, example: pd.DataFrame) -> str:
    """Log the churn trees with MLflow's LightGBM flavour: signature and input example from ``example``; returns the
    LoggedModel's ``models:/<model_id>`` URI.

    The flavour predicts the *uncalibrated* probability; the calibrator is logged beside it (churn/calibrator.json)
    and the stage's ``p_churn`` is the calibrator applied to this output.

    The integer features (``frequency``, ``tenure_days``, the ``purchase_days*`` counts) are declared integers on
    purpose: the features schema defines every one of them for every customer, while each feature that can be
    missing (``gap_mean_days``, ``overdue_ratio``...) is a float already. So MLflow's hint that an integer column
    cannot hold a missing value is answered, and silenced for this call only; the signature accepts the features
    tables as the pipeline writes them.
    """
    booster.best_iteration = best_iteration  # saved models keep only the early-stopped trees
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
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


def new_version(model_uri: str, name: str, tags: Mapping[str, str]) -> str:
    """Register the LoggedModel at ``model_uri`` (``models:/<model_id>``) as a new version of ``name``, created
    first if it does not exist yet, with ``tags`` and the active run; returns the version.

    Through the client rather than ``mlflow.register_model``, which tries to create the registered model every
    time and prints "already exists" when it does (and "Created version" when it is done) to stderr.
    """
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _missing(exc):
            raise
        try:
            client.create_registered_model(name, description="Registered by the churn-clv pipeline; see its README.")
        except MlflowException as race:
            if race.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):  # created meanwhile: fine
                raise
    model_id = model_uri.removeprefix("models:/") if re.fullmatch(r"models:/m-[0-9a-f]+", model_uri) else None
    run_id = _active_run_id() or None
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags=dict(tags), model_id=model_id)
    if model_id:  # link the LoggedModel to its version, as mlflow.register_model does (the UI shows it)
        logged = client.get_logged_model(model_id)
        linked = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
        linked.append({"name": mv.name, "version": mv.version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})
    return str(mv.version)


def register(model_uri: str, name: str, alias: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``name``, give it ``alias`` and ``tags``; returns the version.

    Aliases are unique per model: moving ``champion`` (or ``challenger``) to this version takes it from the last.
    """
    version = new_version(model_uri, name, tags)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


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
        version = new_version(model_uri, name, {**version_tags, "run_id": _active_run_id()})
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


def model_file(name: str, version: str, path: str, dst: Path) -> Path:
    """One file of a registered version's model, by its ``models:/<name>/<version>`` URI (e.g. the CLV pyfunc's
    ``artifacts/params.json``), downloaded into ``dst``; returns the local file."""
    mlflow.set_tracking_uri(tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar per file is noise in logs
    dst.mkdir(parents=True, exist_ok=True)
    uri = f"models:/{name}/{version}/{path}"
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except (MlflowException, OSError) as exc:
        raise MissingArtifact(f"{uri} is not in the store") from exc
    if not local.is_file():
        raise MissingArtifact(f"{uri} is not a file")
    return local


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
