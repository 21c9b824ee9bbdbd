"""What every stage's ``main`` shares: argument parsing, logging set-up, staged outputs and one-line errors."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import yaml

from features.errors import InputError
from pipeline import io

DEBUG_ENV = "CHURN_CLV_DEBUG"

# Errors of the machine rather than of the data, and what to do about each. Any other OSError is a bug: traceback.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some space and run the stage again",
    errno.EDQUOT: "free some space (or raise the quota) and run the stage again",
    errno.EROFS: "the file system is mounted read-only: remount it writable, or run the project from a writable copy",
    errno.EACCES: "make it readable and writable for this user",
    errno.EPERM: "make it readable and writable for this user",
}
DUCKDB_ENVIRONMENT_ERRORS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    p.add_argument(
        "--debug", action="store_true", help=f"show the full traceback of a data error (or set {DEBUG_ENV}=1)"
    )
    return p


def output(p: argparse.ArgumentParser, flag: str, *, directory: bool = False, keep_existing: bool = False) -> None:
    """Declare an output of the stage: under ``run`` it is written to a staging place and moved into place at the end.

    ``directory`` for a folder output; ``keep_existing`` for a folder the stage adds to (earlier weeks' lists).
    """

    def staged(value: str) -> Path:
        return io.output_directory(value, keep_existing) if directory else io.output_file(value)

    p.add_argument(flag, required=True, type=staged, metavar=flag.lstrip("-").upper())


def input_file(p: argparse.ArgumentParser, flag: str, *, required: bool = True, help: str | None = None) -> None:
    """Declare an input file of the stage: a damaged Parquet input is then reported by name."""
    p.add_argument(flag, required=required, type=io.input_file, help=help, metavar=flag.lstrip("-").upper())


def writer_stage(path: Path, dvc_yaml: Path = Path("dvc.yaml")) -> str | None:
    """The dvc.yaml stage that has ``path`` among its outputs (or inside an output folder), if there is a dvc.yaml
    here and one has."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    wanted = os.path.normpath(path)
    for name, stage in stages.items() if isinstance(stages, dict) else []:
        declared = [*stage.get("outs", []), *stage.get("metrics", [])] if isinstance(stage, dict) else []
        for out in declared:
            out_path = next(iter(out)) if isinstance(out, dict) else out
            if not isinstance(out_path, str):
                continue
            declared_path = os.path.normpath(out_path)
            if wanted == declared_path or wanted.startswith(declared_path + os.sep):
                return str(name)
    return None


def _damaged_message(damaged: io.DamagedInput) -> str:
    stage = writer_stage(damaged.path)
    rerun = f"`dvc repro --force --single-item {stage}`" if stage else "`dvc repro --force`"
    return f"{damaged.path}: {damaged.reason}; it is damaged or was cut short: rerun the stage that writes it ({rerun})"


def _environment_message(exc: OSError, staged: io.StagedOutputs) -> str:
    code = exc.errno if exc.errno is not None else -1
    if exc.filename:
        where = staged.final_names(str(exc.filename))
        if Path(where).name.startswith(".") and where.endswith(".tmp"):  # a staging place: name its folder
            where = str(Path(where).parent)
    else:
        where = "writing " + (", ".join(map(str, staged.targets())) or "the outputs")
    reason = exc.strerror or os.strerror(code)
    return f"{where}: {reason}; {ENVIRONMENT_ERRORS[code]} (the previous outputs are unchanged)"


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def run(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Call a stage's ``main`` with its outputs staged; a data, settings or machine problem prints one line and exits 2.

    The outputs move into place only when ``main`` returns: failed or killed, the stage leaves the previous ones.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    staged = io.StagedOutputs()
    names = _FinalNames(staged)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(names)
    try:
        _run_staged(main, args, staged, debug)
    finally:
        for handler in handlers:
            handler.removeFilter(names)


def _run_staged(main: Callable[[Sequence[str]], None], args: list[str], staged: io.StagedOutputs, debug: bool) -> None:
    try:
        with io.staging(staged):
            main(args)
    except io.DamagedInput as exc:
        if debug:
            raise
        _fail(_damaged_message(exc))
    except InputError as exc:
        if debug:
            raise
        _fail(staged.final_names(_one_line(str(exc))))
    except (OSError, duckdb.Error, pa.ArrowException) as exc:
        if debug:
            raise
        code = exc.errno if isinstance(exc, OSError) else None
        if isinstance(exc, duckdb.IOException):
            code = next((c for text, c in DUCKDB_ENVIRONMENT_ERRORS.items() if text in str(exc)), None)
        if code in ENVIRONMENT_ERRORS:
            _fail(_environment_message(exc if isinstance(exc, OSError) else OSError(code, os.strerror(code)), staged))
        damaged = io.find_damaged_input(staged)  # a reader failed: was it on a damaged file between stages?
        if damaged is None:
            raise
        _fail(_damaged_message(damaged))


class _FinalNames(logging.Filter):
    """Log lines name the outputs by their own paths, not by the staging places the stage writes them to."""

    def __init__(self, staged: io.StagedOutputs) -> None:
        super().__init__()
        self.staged = staged

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        final = self.staged.final_names(message)
        if final != message:
            record.msg, record.args = final, None
        return True


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
