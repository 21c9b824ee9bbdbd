from __future__ import annotations

import copy
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import (
    BaseConfig,
    ChurnConfig,
    ClvConfig,
    ConfigError,
    FeaturesConfig,
    IngestConfig,
    ScoreConfig,
    load_params,
    parse_params,
    scoring_as_of,
    section,
    set_scoring_as_of,
)

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_load(params: dict[str, Any]) -> None:
    base = section(params, "base", BaseConfig)
    ingest = section(params, "ingest", IngestConfig)
    feats = section(params, "features", FeaturesConfig)
    assert base.time_unit == "weeks"
    assert ingest.source == "cdnow"
    assert feats.cutoffs == (dt.date(1997, 9, 30),)
    assert feats.windows_days == (30, 90, 180, 365)


def test_missing_key_is_named(params: dict[str, Any]) -> None:
    del params["features"]["horizon_days"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) features\.horizon_days"):
        section(params, "features", FeaturesConfig)


def test_unknown_key_is_named(params: dict[str, Any]) -> None:
    params["ingest"]["colums"] = {}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) ingest\.colums"):
        section(params, "ingest", IngestConfig)


def test_nested_missing_key_is_named(params: dict[str, Any]) -> None:
    del params["ingest"]["columns"]["order_id"]
    with pytest.raises(ConfigError, match=r"ingest\.columns\.order_id"):
        section(params, "ingest", IngestConfig)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("horizon_days", "90", r"features\.horizon_days: expected a whole number, got '90'"),
        ("horizon_days", 1.5, r"features\.horizon_days: expected a whole number, got 1\.5"),
        ("horizon_days", True, r"features\.horizon_days: expected a whole number"),
        ("horizon_days", 0, r"features\.horizon_days must be between 1 and 36,525 days \(100 years\), got 0"),
        ("horizon_days", 10**12, r"features\.horizon_days: 1000000000000 is out of range \(at most 2,147,483,647"),
        ("horizon_days", 50_000, r"features\.horizon_days must be between 1 and 36,525 days"),
        ("windows_days", [30, 10**6], r"features\.windows_days\[1\] must be between 1 and 36,525 days"),
        ("windows_days", [30, 30], r"features\.windows_days must be distinct"),
        ("windows_days", 30, r"features\.windows_days: expected a list, got 30"),
    ],
)
def test_bad_feature_values(params: dict[str, Any], key: str, value: object, message: str) -> None:
    params["features"][key] = value
    with pytest.raises(ConfigError, match=message):
        section(params, "features", FeaturesConfig)


def test_bad_literal(params: dict[str, Any]) -> None:
    params["base"]["time_unit"] = "months"
    with pytest.raises(ConfigError, match=r"base\.time_unit: must be one of days, weeks; got 'months'"):
        section(params, "base", BaseConfig)


def test_amount_and_quantity_are_exclusive(params: dict[str, Any]) -> None:
    params["ingest"]["columns"]["quantity"] = "number_of_cds"
    with pytest.raises(ConfigError, match=r"set either 'amount', or both 'quantity' and 'unit_price'"):
        section(params, "ingest", IngestConfig)


@pytest.mark.parametrize("value", [0, -5.0, 1e12])
def test_max_abs_amount_is_bounded(params: dict[str, Any], value: float) -> None:
    params["ingest"]["max_abs_amount"] = value  # amounts are summed as exact decimals: 12 digits before the point
    with pytest.raises(ConfigError, match=r"ingest\.max_abs_amount must be > 0 and at most 999999999999, got"):
        section(params, "ingest", IngestConfig)


def test_duplicate_key_needs_order_id(params: dict[str, Any]) -> None:
    params["ingest"]["duplicate_key"] = ["customer_id", "date"]
    with pytest.raises(ConfigError, match=r"must include the mapped order id column"):
        section(params, "ingest", IngestConfig)


def test_missing_section(params: dict[str, Any]) -> None:
    del params["base"]
    with pytest.raises(ConfigError, match=r"section 'base' is missing"):
        section(params, "base", BaseConfig)


def test_set_scoring_as_of_changes_one_line(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    set_scoring_as_of(target, None)  # the project's file may hold the last `make weekly` date
    original = target.read_text(encoding="utf-8")
    set_scoring_as_of(target, dt.date(1998, 3, 2))
    changed = target.read_text(encoding="utf-8")
    diff = [(a, b) for a, b in zip(original.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert diff == [("  as_of:", "  as_of: '1998-03-02'")]
    assert scoring_as_of(load_params(target)) == dt.date(1998, 3, 2)
    set_scoring_as_of(target, None)
    assert target.read_text(encoding="utf-8") == original


@pytest.mark.parametrize(
    ("override", "changed"),
    [("churn.lightgbm.num_leaves=31", ["    num_leaves: 31"]), ("base.seed=42", [])],
)
def test_params_yaml_is_kept_in_the_form_dvc_writes_back(tmp_path: Path, override: str, changed: list[str]) -> None:
    # `dvc exp run -S key=value` applies the override with DVC's own function and dumps the whole file through
    # ruamel.yaml: a file in another form comes back rewritten (quotes, nulls, inline lists turned into blocks, a
    # comment after a list dropped), a one-value experiment as a 70-line diff. This is that function.
    from dvc.utils.hydra import apply_overrides

    target = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text(encoding="utf-8")
    target.write_text(original, encoding="utf-8")
    apply_overrides(target, [override])
    after = target.read_text(encoding="utf-8").splitlines()
    diff = [b for a, b in zip(original.splitlines(), after, strict=True) if a != b]
    assert diff == changed


def _containers(values: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, empty value)`` for every key of ``values`` holding a list or a mapping."""
    found = []
    for key, value in values.items():
        if isinstance(value, dict):
            found += [(prefix + key, "{}"), *_containers(value, f"{prefix}{key}.")]
        elif isinstance(value, list):
            found.append((prefix + key, "[]"))
    return found


def test_replacing_a_list_or_a_mapping_leaves_a_file_yaml_can_read(tmp_path: Path) -> None:
    # ruamel.yaml writes `key: []` over a block list whose key line holds a comment, and the comment's column
    # then swallows the next key ("cutoff_schedule: every_days: 14"): params.yaml keeps such comments above the key
    from dvc.utils.hydra import apply_overrides

    original = (ROOT / "params.yaml").read_text(encoding="utf-8")
    expected_all = yaml.safe_load(original)
    containers = [c for c in _containers(expected_all) if c[0].count(".") < 2]
    assert ("features.cutoffs", "[]") in containers and ("ingest.columns", "{}") in containers
    broken = []
    for key, empty in containers:
        target = tmp_path / "params.yaml"
        target.write_text(original, encoding="utf-8")
        apply_overrides(target, [f"{key}={empty}"])
        try:
            after = yaml.safe_load(target.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            broken.append(key)
            continue
        # everything else as it was; a list now empty (Hydra merges `{}` into a mapping, which leaves it whole)
        *path, last = key.split(".")
        place = after
        for part in path:
            place = place[part]
        if (empty == "[]" and place[last] != []) or _without(after, key) != _without(expected_all, key):
            broken.append(key)
    assert broken == []


def _without(values: dict[str, Any], key: str) -> dict[str, Any]:
    out = copy.deepcopy(values)
    *path, last = key.split(".")
    place = out
    for part in path:
        place = place[part]
    place.pop(last)
    return out


def test_the_readme_online_retail_experiment_applies_as_written(tmp_path: Path) -> None:
    # the -S overrides of the README's Online Retail command, through DVC's own function
    from dvc.utils.hydra import apply_overrides

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = readme[readme.index("dvc exp run \\\n  -S 'ingest.source=") :]
    command = command[: command.index("\nmake weekly")]
    overrides = [a or b for a, b in re.findall(r"-S '([^']*)'|-S (\S+)", command)]
    assert len(overrides) == 17 and "base.currency=GBP" in overrides
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    apply_overrides(target, overrides)
    params = load_params(target)
    assert params["features"]["cutoffs"] == [] and params["features"]["cutoff_schedule"]["every_days"] == 14
    assert params["ingest"]["columns"]["amount"] is None and params["ingest"]["columns"]["order_id"] == "InvoiceNo"
    assert params["ingest"]["duplicate_key"][0] == "InvoiceNo" and params["base"]["currency"] == "GBP"
    assert section(params, "base", BaseConfig).currency == "GBP"


def test_set_scoring_as_of_needs_the_line(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    target.write_text("features:\n  as_of: null\nscore:\n  summary_top_customers: 25\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no score\.as_of line to set"):
        set_scoring_as_of(target, dt.date(1998, 3, 2))
    assert "1998" not in target.read_text(encoding="utf-8")  # features.as_of was not touched


def test_set_scoring_as_of_after_dvc_rewrote_the_file(tmp_path: Path) -> None:
    # `dvc exp run -S` writes a null as an empty value; the next line must stay on its own line
    target = tmp_path / "params.yaml"
    target.write_text("score:\n  as_of:\n  summary_top_customers: 25\n", encoding="utf-8")
    set_scoring_as_of(target, dt.date(2011, 9, 1))
    assert target.read_text(encoding="utf-8") == "score:\n  as_of: '2011-09-01'\n  summary_top_customers: 25\n"


def test_bad_scoring_date_is_named(params: dict[str, Any]) -> None:
    params["score"]["as_of"] = "next monday"
    with pytest.raises(ConfigError, match=r"score\.as_of: expected a date YYYY-MM-DD, got 'next monday'"):
        scoring_as_of(params)
    del params["score"]["as_of"]
    with pytest.raises(ConfigError, match=r"score\.as_of is missing"):
        scoring_as_of(params)


def test_a_misspelt_section_is_an_error_not_ignored() -> None:
    text = (ROOT / "params.yaml").read_text(encoding="utf-8") + "scroe:\n  pseudonymise_ids: true\n"
    expected = r"^p\.yaml: unknown section 'scroe' \(did you mean 'score'\?\); the sections are base, ingest, "
    with pytest.raises(ConfigError, match=expected):
        parse_params(text, "p.yaml")


def test_a_key_given_twice_is_an_error_not_the_last_one() -> None:
    text = "base:\n  seed: 1\n  seed: 2\n"
    with pytest.raises(ConfigError, match=r"^p\.yaml: key 'seed' is given twice in one mapping \(lines 2 and 3\)"):
        parse_params(text, "p.yaml")
    nested = "score:\n  segments:\n    high: {}\n    high: {}\n"
    with pytest.raises(ConfigError, match=r"key 'high' is given twice .*lines 3 and 4"):
        parse_params(nested, "p.yaml")
    assert parse_params("base:\n  seed: 1\nscore:\n  seed: 1\n", "p.yaml")  # the same key in two mappings is fine


@pytest.mark.parametrize(
    ("section_name", "cls", "path", "value", "message"),
    [
        ("score", ScoreConfig, ("drift_warning_psi",), float("nan"), r"score\.drift_warning_psi: expected a finite"),
        ("churn", ChurnConfig, ("registry", "min_improvement"), float("nan"), r"churn\.registry\.min_improvement: exp"),
        ("clv", ClvConfig, ("registry", "min_improvement"), float("inf"), r"clv\.registry\.min_improvement: expected"),
        ("churn", ChurnConfig, ("lightgbm", "lambda_l2"), float("nan"), r"churn\.lightgbm\.lambda_l2: expected a fin"),
        ("base", BaseConfig, ("seed",), -1, r"base\.seed must be a whole number from 0 to 2,147,483,647, got -1"),
        ("base", BaseConfig, ("seed",), 2**32, r"base\.seed: 4294967296 is out of range"),
        ("base", BaseConfig, ("mlflow_experiment",), " ", r"base\.mlflow_experiment must be a name of 1 to 500"),
        ("churn", ChurnConfig, ("registry", "model_name"), "team/churn", r"churn\.registry\.model_name must be"),
        ("clv", ClvConfig, ("registry", "model_name"), "..clv", r"clv\.registry\.model_name must be letters"),
        ("clv", ClvConfig, ("registry", "model_name"), "a:b", r"clv\.registry\.model_name must be letters"),
        ("churn", ChurnConfig, ("population_lookback_days",), 10**7, r"churn\.population_lookback_days must be betw"),
        ("features", FeaturesConfig, ("cutoff_schedule", "count"), 10**6, r"reaches back more than 36,525 days"),
        ("score", ScoreConfig, ("churn_scorer",), "lightgbm", r"score\.churn_scorer must be one of auto, model, btyd"),
    ],
)
def test_values_no_stage_could_use_are_named(
    params: dict[str, Any], section_name: str, cls: type, path: tuple[str, ...], value: object, message: str
) -> None:
    target = params[section_name]
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        section(params, section_name, cls)


def test_registered_names_mlflow_takes_pass(params: dict[str, Any]) -> None:
    params["churn"]["registry"]["model_name"] = "Churn model 2.0_é"
    assert section(params, "churn", ChurnConfig).registry.model_name == "Churn model 2.0_é"


def test_an_unreadable_params_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "params.yaml"
    target.write_text("base: {}\n", encoding="utf-8")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    with monkeypatch.context() as m:
        m.setattr(Path, "read_text", denied)
        with pytest.raises(ConfigError, match=r"params\.yaml: cannot be read \(Permission denied\); check its perm"):
            load_params(target)
    with pytest.raises(ConfigError, match=r"is a directory, not a params file"):
        load_params(tmp_path)
    target.write_bytes(b"base:\n  mlflow_experiment: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not UTF-8 text \(invalid continuation byte at byte 30\)"):
        load_params(target)
