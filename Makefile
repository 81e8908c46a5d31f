# Two commands on a fresh clone (Python 3.11, pip, git): `make run` and `make test`.
# Both create .venv and install the project on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# offline `dvc plots show` (plots.html_template in .dvc/config), written at install time
PLOTS_TEMPLATE := .dvc/offline/plots.html

.PHONY: install run test test-fast clean readme study ranking screenshot

install: $(STAMP) $(PLOTS_TEMPLATE)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(PLOTS_TEMPLATE): $(STAMP) scripts/plots_template.py
	$(BIN)/python scripts/plots_template.py $@

run: install  ## the default experiment: every stage that is out of date, then the results
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	@$(BIN)/python -c "import json; from transferlab.evaluation import results_markdown as t; \
	print(t(json.load(open('metrics/evaluate.json'))), end='')"
	@echo "report: $(CURDIR)/report.html (open it in a browser)"

test: install  ## the whole suite, end-to-end dvc runs included (what CI runs)
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest

test-fast: install  ## without the end-to-end dvc runs
	PATH="$(CURDIR)/$(BIN):$$PATH" pytest -m "not slow"

clean:  ## remove the pipeline's cached outputs (the DVC cache keeps them: `dvc checkout`)
	rm -rf data/raw data/prepared data/features models

study: install  ## the label-budget x seed study and the layer grid (about 6 minutes on 2 cores)
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro study/dvc.yaml

ranking: install  ## transferability scores vs real outcomes of candidate sources (ranking/dvc.yaml)
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro ranking/dvc.yaml

readme:  ## copy the committed result tables into README.md (a test checks they agree)
	$(BIN)/python scripts/sync_readme.py

screenshot:  ## docs/report.png, the README's picture of report.html (needs chromium)
	$(BIN)/python scripts/report_screenshot.py
