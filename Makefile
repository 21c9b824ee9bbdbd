# Two commands set up everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install java run weekly train audit exp compare ui test lint typecheck pytest bench bench-growth bench-ingest bench-features bench-clv bench-churn reproduce-cdnow demo-campaign lock clean

PLOTS_TEMPLATE := .dvc/offline_plots.html

install: $(STAMP) $(PLOTS_TEMPLATE)

# The page `dvc plots show` fills (.dvc/config: plots.html_template), with Vega, Vega-Lite and vega-embed inlined
# from the installed vl-convert-python, so dvc_plots/index.html draws every plot with no network.
$(PLOTS_TEMPLATE): $(STAMP) pipeline/plots_template.py
	$(BIN)/python -m pipeline.plots_template --out $@

# Installs exactly the versions in requirements.lock (what CI tested); reruns when either file changes.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,spark]'
	@$(MAKE) --no-print-directory java
	@touch $(STAMP)

# Spark (base.engine: spark, and its conformance test) needs a Java 17 runtime: found on PATH, or installed from
# Debian's packages when this is root on a Debian-like machine; otherwise the Spark test says why it skips.
java:
	@found="$$(java -version 2>&1 || true)"; \
	if printf '%s' "$$found" | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing a Java 17 runtime for Spark (openjdk-17-jre-headless)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	else echo "note: no Java 17+ on PATH; install one to use base.engine: spark"; fi

run: install
	dvc repro
	@echo
	@echo "Outputs:"
	@echo "  clean transactions   data/transactions.parquet  (rejected rows: data/quarantine.parquet)"
	@echo "  training features    data/features.parquet  (as of train.as_of)"
	@echo "  models               artifacts/clv/params.json, artifacts/churn/  (metrics/clv.json, churn.json; dvc plots show)"
	@echo "  backtest             metrics/backtest.json  (every churn scorer and CLV model at many past weeks; plots/backtest/)"
	@echo "  week's snapshot      data/snapshot.parquet  (as of score.as_of)"
	@echo "  customer value       data/clv.parquet"
	@echo "  churn risk, reasons  data/churn.parquet"
	@echo "  scores and segments  data/scores.parquet  (KPIs: data/segments.csv; metrics/score.json)"
	@echo "  campaign             data/assignments.parquet (this week's arms), campaign/assignments/ (the log, outside DVC)"
	@echo "                       metrics/campaign.json (measured lift, effects in use, uplift gate)"
	@echo "  weekly list, summary reports/weekly/<year>-W<week>/  (churn_risk.csv: contacts first, no control; summary.html)"
	@echo "  MLflow runs          mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///mlflow.db"
	@echo "  metrics              metrics/*.json   (dvc metrics show)"
	@echo "  every row accounted  make audit"

# The weekly churn-risk list as of AS_OF (YYYY-MM-DD): the week's snapshot scored by the serving models, written to
# reports/weekly/<ISO year>-W<week>/. Nothing is retrained unless the models are older than
# train.max_model_age_days, or the week is before their training date (a back-fill: models trained as of that
# week). Several dates back-fill several weeks: AS_OF="1998-02-23 1998-03-02". Without AS_OF: the day after the
# last purchase. Each week is a DVC experiment (`dvc exp show` lists them); params.yaml keeps the last dates.
# It runs the report and what it depends on: a week that only scores runs no training stage and no backtest; one
# that retrains (a back-fill included) reruns the backtest too, so the scorer it serves is chosen on the evidence
# of its own training date.
# `make train AS_OF=...` retrains as of that date on purpose.
AS_OF ?=
# The last LAST runs of the clv and churn stages side by side: changed params, holdout metrics, best in bold.
# Also written to reports/compare.md.
# Every experiment of this commit beside its baseline: the params that differ and the key figures (metrics/key.json);
# ALL=1 for every commit's. `dvc exp show` has all of the ~300 metrics; `dvc metrics diff` compares the workspace.
exp: install
	python -m pipeline.experiments $(if $(ALL),--all-commits)

compare: install
	python -m pipeline.compare --last $(or $(LAST),5)

# The MLflow UI on this machine only (127.0.0.1), against the project's store.
ui: install
	mlflow ui --host 127.0.0.1 --port $(or $(PORT),5000) --backend-store-uri sqlite:///mlflow.db

# Every row from the raw log to the weekly list accounted for, and no NaN or infinity in any output; exit 1 if not.
audit: install
	python -m pipeline.audit

weekly: install
	@for day in $(or $(AS_OF),null); do \
	  start=$$SECONDS; \
	  python -m pipeline.schedule --as-of "$$day" --name-to .dvc/tmp/week-name; \
	  echo "== churn-risk list as of $$day: experiment $$(cat .dvc/tmp/week-name)"; \
	  dvc exp run -n "$$(cat .dvc/tmp/week-name)" report; \
	  echo "== week $$day: $$((SECONDS - start)) s"; \
	done

train: install
	@start=$$SECONDS; \
	python -m pipeline.schedule --train --as-of "$(or $(AS_OF),null)" --name-to .dvc/tmp/week-name; \
	dvc exp run -n "$$(cat .dvc/tmp/week-name)"; \
	echo "== trained as of $(or $(AS_OF),the end of the log): $$((SECONDS - start)) s"

test: lint typecheck pytest

lint: install
	ruff check .
	ruff format --check .

typecheck: install
	mypy

pytest: install
	pytest -q

# Speed and memory on one seeded synthetic log of N customers (MBG/NBD process), in one run: every pipeline stage as
# dvc.yaml runs it, then the CLV path (RFM summary, BG/NBD, Gamma-Gamma, 12-month CLV) against plain lifetimes.
# Writes reports/bench/<N>.json. SKIP_NAIVE=1 leaves lifetimes out (sizes where it does not fit in memory);
# SKIP_BACKTEST=1 leaves the backtest out (an hour at 10M), the serving models set in params (bench.pipeline.FIXED_SERVING).
N ?= 1000000
CHURN_N ?= 100000
bench: install
	python -m bench.pipeline --customers $(N) $(if $(SKIP_NAIVE),--skip-naive) $(if $(SKIP_BACKTEST),--skip-backtest)

# Each stage's wall time and peak at every size benched so far (reports/bench/<N>.json), and its peak's growth.
bench-growth: install
	python -m bench.growth

# The ingest stage on each engine (DuckDB, Spark local[2]) on the same log, Parquet and a CSV copy of it: wall time,
# peak memory (Spark's JVM included) and whether both wrote the same outputs. Writes reports/bench/ingest_<N>.json.
bench-ingest: install
	python -m bench.ingest --customers $(N) --csv

# One part at a time: the features stage vs lifetimes' summary; CLV fits vs lifetimes; churn training vs sklearn.
bench-features: install
	python -m bench.features --customers $(N)

bench-clv: install
	python -m bench.clv --customers $(N)

# 100,000 customers at 11 cutoffs: about 1.1M labelled rows
bench-churn: install
	python -m bench.churn --customers $(CHURN_N)

# The campaign loop against a known, customer-varying effect (about 7 minutes): CDNOW through the real stages for
# 10 consecutive weeks in a scratch folder (CDNOW_SEED=1 for another draw), then a simulated business: the measured
# lift per segment beside the truth, the pooled interval's coverage over 20 seeds, and the uplift gate on a varying
# and on a uniform effect.
demo-campaign: install
	python -m bench.campaign --weeks $(or $(WEEKS),10) --customers $(or $(CUSTOMERS),6000) --seeds $(or $(SEEDS),20) \
	  --cdnow-seed $(or $(CDNOW_SEED),0)

# Fader, Hardie & Lee (2005) on raw CDNOW_sample through the pipeline's code; fails if a number differs.
reproduce-cdnow: install
	python -m pipeline.reproduce_cdnow --out reports/cdnow_reproduction.json

# Refresh the pinned versions after changing dependencies in pyproject.toml.
lock: install
	$(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e ' > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
