# Two commands on a fresh clone (Python 3.11, 3.12 or 3.13, pip, git): `make run` and `make test`.
# Both create .venv and install the project on first use.
#
# The interpreter: PYTHON if you set it (`make install PYTHON=python3.13`), else the first of
# PYTHONS that runs and is 3.11-3.13. 3.11 comes first: the full suite runs on it in CI, and
# on this project's machines torch's wheels lie on disk for it (an install took 1 min 41 s;
# 3.12 and 3.13 download 1.1 GB more from PyPI and took 1 min 56 s and 2 min 35 s). Each candidate is run, not just looked up: a pyenv shim of a
# version that is not installed exists on PATH but exits 127.
# Another interpreter beside .venv: `make test-fast PYTHON=python3.12 VENV=.venv-3.12`.
PYTHONS := python3.11 python3.12 python3.13 python3
SUPPORTED := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# offline `dvc plots show`: committed, pointed at by plots.html_template in .dvc/config
PLOTS_TEMPLATE := .dvc/offline-plots.html

# Sets $$py to the chosen interpreter, or ends the recipe with one line saying what to do.
FIND_PYTHON = py="$(PYTHON)"; \
	if [ -n "$$py" ]; then \
	    "$$py" -c '$(SUPPORTED)' 2>/dev/null || { echo "PYTHON=$$py is not a Python 3.11, 3.12 or 3.13 that runs ($$("$$py" --version 2>&1 | head -n 1)): name another, or unset PYTHON to take the first of $(PYTHONS)" >&2; exit 1; }; \
	else \
	    for candidate in $(PYTHONS); do \
	        if "$$candidate" -c '$(SUPPORTED)' 2>/dev/null; then py=$$candidate; break; fi; \
	    done; \
	    [ -n "$$py" ] || { echo "no Python 3.11, 3.12 or 3.13 found (tried $(PYTHONS)): install one, or name it with make install PYTHON=/path/to/python3.12" >&2; exit 1; }; \
	fi

.PHONY: install python plots-template run test test-fast clean readme study ranking selection screenshot

install: $(STAMP) $(PLOTS_TEMPLATE)

python:  ## which interpreter `make install` would make a new venv with
	@$(FIND_PYTHON); "$$py" -c 'import sys; print(sys.argv[1], sys.version.split()[0], sys.executable)' "$$py"

$(STAMP): pyproject.toml
	@if [ -x $(BIN)/python ]; then \
	    echo "$(VENV): reusing it ($$($(BIN)/python --version)); remove it to make it anew"; \
	else \
	    $(FIND_PYTHON); \
	    "$$py" -c 'import sys; name, exe = sys.argv[1], sys.executable; print(f"$(VENV): Python {sys.version.split()[0]}, {exe}" + ("" if name == exe else f" ({name})"))' "$$py"; \
	    "$$py" -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Committed, so that every install route (`pip install -e .` included) has it; rewritten only
# when missing. `make plots-template` rewrites it from the pinned vl-convert-python (a test
# checks the committed page equals that).
$(PLOTS_TEMPLATE): | $(STAMP)
	$(BIN)/python scripts/plots_template.py $@

plots-template: $(STAMP)
	$(BIN)/python scripts/plots_template.py $(PLOTS_TEMPLATE)

run: install  ## the default experiment: every stage that is out of date, then the results
	PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@$(BIN)/python -c "import json; from transferlab.evaluation import results_markdown as t; \
	print(t(json.load(open('metrics/evaluate.json'))), end='')"
	@echo "report: $(CURDIR)/report.html (open it in a browser)"

test: install  ## the whole suite, end-to-end dvc runs included (what CI runs)
	PATH="$(abspath $(BIN)):$$PATH" pytest

test-fast: install  ## without the end-to-end dvc runs
	PATH="$(abspath $(BIN)):$$PATH" pytest -m "not slow"

clean:  ## remove the pipeline's cached outputs (the DVC cache keeps them: `dvc checkout`)
	rm -rf data/raw data/prepared data/features models

# the study's and the ranking's independent stages at once (transferlab-fanout, docs/scaling.md);
# `dvc repro study/dvc.yaml` runs the same stages one at a time and records the same dvc.lock
JOBS ?= $(shell nproc)

# the default pipeline first, one stage at a time: run by the fanout its stages would get
# cores / JOBS torch threads, and a thread count changes float sums (docs/scaling.md), so its
# committed outputs would stop being what a plain `dvc repro` gives
study: install  ## the label-budget x seed study and the layer grid, JOBS stages at once
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro dvc.yaml
	PATH="$(abspath $(BIN)):$$PATH" transferlab-fanout study/dvc.yaml --jobs $(JOBS)

ranking: install  ## transferability scores vs real outcomes of candidate sources (ranking/dvc.yaml)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro dvc.yaml
	PATH="$(abspath $(BIN)):$$PATH" transferlab-fanout ranking/dvc.yaml --jobs $(JOBS)

selection: install  ## label-free selection measured: tasks x seeds x hyper-parameter draws (selection/dvc.yaml)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro dvc.yaml
	PATH="$(abspath $(BIN)):$$PATH" transferlab-fanout selection/dvc.yaml --jobs $(JOBS)

readme:  ## copy the committed result tables into README.md (a test checks they agree)
	$(BIN)/python scripts/sync_readme.py

screenshot:  ## docs/report.png, the README's picture of report.html (needs chromium)
	$(BIN)/python scripts/report_screenshot.py
