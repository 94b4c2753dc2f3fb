# Two commands run everything: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint serve bench-engine clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev,ray,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# The documentation site in site/; its figures come from results files (python -m docs.render).
.PHONY: docs
docs: install
	$(BIN)/mkdocs build --strict

# Trains the default classifier first when the model store has none (about 5 to 7 minutes: training, then calibration at every N and "auto").
serve: install
	@$(BIN)/bentoml models get uq-classifier:latest >/dev/null 2>&1 || $(BIN)/uq-train
	$(BIN)/bentoml serve --host 0.0.0.0 --port 3000

bench-engine: install
	$(BIN)/python benchmarks/mc_engine.py --output benchmarks/results/mc_engine.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
