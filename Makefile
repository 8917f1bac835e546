# Two entry points: `make demo` (the main job on bundled defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA ?= ../shared/data
DEMO_DIR ?= demo_out
K ?= 4

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	# torch first: the CPU wheel lies on disk; a bare requirement could pull a multi-GB CUDA build
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[s3,cluster,tracking,eval,dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m preprocessing.degrade --input $(DATA)/brain/train --output $(DEMO_DIR)/lr --k $(K) --slice-axis 2
	$(PY) -m preprocessing.to_zarr --input $(DEMO_DIR)/lr --output $(DEMO_DIR)/lr.zarr --workers 2
	$(PY) -m slicesr.cli store-info $(DEMO_DIR)/lr.zarr

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest tests

bench: demo
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/stage1.py --store $(DEMO_DIR)/lr.zarr
	$(PY) benchmarks/stage1_latent.py --store $(DEMO_DIR)/lr.zarr

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
