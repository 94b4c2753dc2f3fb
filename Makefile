# Two commands run everything: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint serve clean results results-engine results-scoring results-stratified \
	results-adaptive results-service results-evaluate results-loadtest results-http results-models

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev,ray,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

# tests/service/test_adapter.py runs in a process of its own: it serves a probe service of
# BentoML's beside none of ours, and BentoML keeps one current service per process.
test: lint
	$(BIN)/python -m pytest --ignore=tests/service/test_adapter.py
	$(BIN)/python -m pytest tests/service/test_adapter.py

# The documentation site in site/; its figures come from results files (python -m docs.render).
.PHONY: docs
docs: install
	$(BIN)/mkdocs build --strict

# Trains the default classifier first when the model store has none (about 5 to 7 minutes: training, then calibration at every N and "auto").
serve: install
	@$(BIN)/bentoml models get uq-classifier:latest >/dev/null 2>&1 || $(BIN)/uq-train
	$(BIN)/bentoml serve --host 0.0.0.0 --port 3000

# Re-measure the committed results files (each records its command, commit, date and machine).
# Every family but engine and scoring measures MODEL, the default Fashion-MNIST classifier
# trained by uq-train; results-loadtest reads results-adaptive's evaluation.json.
MODEL ?= uq-classifier:latest
RESULTS := benchmarks/results
DOCS_RESULTS := docs/results

results: results-engine results-scoring results-stratified results-adaptive results-service \
	results-evaluate results-loadtest results-http results-models

results-engine: install
	$(BIN)/python -m benchmarks.mc_engine --output $(RESULTS)/mc_engine.json

results-scoring: install
	$(BIN)/python -m benchmarks.scoring --output $(RESULTS)/scoring.json

results-stratified: install
	$(BIN)/python -m benchmarks.stratified --model $(MODEL) --output $(RESULTS)/stratified.json

results-adaptive: install
	$(BIN)/python -m benchmarks.adaptive_rule --model $(MODEL) \
		--output $(RESULTS)/adaptive_rule.json
	$(BIN)/python -m benchmarks.adaptive --model $(MODEL) --duration 8 --rounds 3 \
		--output $(RESULTS)/adaptive.json
	$(BIN)/uq-evaluate --model $(MODEL) --samples 1,5,10,12,16,20,30,50,100 \
		--off-grid-samples 75 --output-dir $(DOCS_RESULTS)/adaptive
	$(BIN)/uq-loadtest --serve --model $(MODEL) --samples 10,50,auto --duration 15 --users 32 \
		--evaluation $(DOCS_RESULTS)/adaptive/evaluation.json \
		--output-dir $(DOCS_RESULTS)/adaptive/loadtest

results-service: install
	$(BIN)/python -m benchmarks.http_service --model $(MODEL) --n-samples 30 --concurrency 32 \
		--duration 10 --rounds 5 --output $(RESULTS)/service.json
	$(BIN)/python -m benchmarks.refusal_cost --model $(MODEL) \
		--output $(RESULTS)/refusal_cost.json
	$(BIN)/python -m benchmarks.loop_cost --model $(MODEL) --rounds 3 --seconds 5 \
		--output $(RESULTS)/loop_cost.json
	$(BIN)/python -m benchmarks.admission --model $(MODEL) --rounds 3 \
		--output $(RESULTS)/admission.json
	$(BIN)/python -m benchmarks.overload --serve --model $(MODEL) \
		--output $(RESULTS)/overload.json

results-evaluate: install
	$(BIN)/uq-evaluate --model $(MODEL) --output-dir $(DOCS_RESULTS)/evaluate

results-loadtest: install
	$(BIN)/uq-loadtest --serve --model $(MODEL) --samples 1,5,10,20,30,50,100,auto \
		--duration 10 --users 32 --evaluation $(DOCS_RESULTS)/adaptive/evaluation.json \
		--output-dir $(DOCS_RESULTS)/loadtest

results-http: install
	$(BIN)/python -m loadtest.guarantees --serve --model $(MODEL) \
		--output $(DOCS_RESULTS)/http_guarantees.json
	$(BIN)/python -m loadtest.drift_replay --serve --model $(MODEL) \
		--output $(DOCS_RESULTS)/http_drift.json

# Trains both uq-train presets (uq-preset-cnn, uq-preset-mlp) and compares them through HTTP.
results-models: install
	$(BIN)/python -m benchmarks.models --output $(DOCS_RESULTS)/models/comparison.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
