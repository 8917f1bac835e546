# Two entry points: `make demo` (the main job on bundled defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA ?= ../shared/data
DEMO_DIR ?= demo_out
# The demo's training lengths: about 16 minutes on 2 cores in all (README) (benchmarks/quality.py runs the longer
# trainings). Stage II (the through-plane 2D generator on in-plane pairs) gets most of them.
DEMO_VAE_STEPS ?= 150
DEMO_SR_STEPS ?= 500

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: setup.cfg pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) EDITABLE=1 scripts/setup.sh
	touch $@

setup: $(VENV)/.installed

# The whole method as one pipeline (configs/pipeline.yaml): LR versions of $(DATA)/brain/train, Zarr,
# stage I and stage II on a local Ray instance, MLflow registry, evaluation on $(DATA)/brain/eval.
demo: setup
	$(PY) -m cluster.pipeline --config configs/pipeline.yaml --set workdir=$(DEMO_DIR) \
		--set preprocess.inputs=[$(DATA)/brain/train] --set evaluation.hr=[$(DATA)/brain/eval] \
		--set stage1.max_steps=$(DEMO_VAE_STEPS) --set stage2.max_steps=$(DEMO_SR_STEPS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

test: setup lint
	$(PY) -m pytest tests

bench: demo
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/stage1.py --store $(DEMO_DIR)/lr.zarr
	$(PY) benchmarks/quality.py --workdir runs/quality
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/training.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
