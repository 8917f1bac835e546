# Two entry points: `make demo` (the main job on bundled defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA ?= ../shared/data
DEMO_DIR ?= demo_out
K ?= 4
# The demo's training lengths: minutes on 2 cores, enough to see every stage work, not for quality
# (benchmarks/stage1.py and benchmarks/stage2.py run the longer trainings).
DEMO_VAE_STEPS ?= 300
DEMO_SR_STEPS ?= 300
RUNS := $(DEMO_DIR)/runs

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
	$(PY) -m slicesr.cli train-vae --config configs/cpu/stage1.yaml --set data.store=$(DEMO_DIR)/lr.zarr \
		--set run.storage_path=$(RUNS) --set train.max_steps=$(DEMO_VAE_STEPS) --set schedule.phase_steps=[50,100]
	$(PY) -m slicesr.cli synthesize --model $(RUNS)/stage1-cpu/best --input $(DEMO_DIR)/lr.zarr \
		--output $(DEMO_DIR)/synthetic_hr.zarr --k $(K)
	$(PY) -m slicesr.cli train-sr --config configs/cpu/stage2.yaml --set data.store=$(DEMO_DIR)/synthetic_hr.zarr \
		--set run.storage_path=$(RUNS) --set train.max_steps=$(DEMO_SR_STEPS) --set sr.k=$(K)
	$(PY) -m slicesr.cli infer $(DEMO_DIR)/lr/brats18_case0_t1.nii.gz --output $(DEMO_DIR)/sr/brats18_case0_t1.nii.gz \
		--model $(RUNS)/stage2-cpu/best
	$(PY) -m slicesr.cli evaluate $(DATA)/brain/eval --k $(K) --slice-axis 2 --output $(DEMO_DIR)/eval \
		--methods linear,cubic,$(RUNS)/stage1-cpu/best,$(RUNS)/stage2-cpu/best

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest tests

bench: demo
	$(PY) benchmarks/preprocess.py
	$(PY) benchmarks/stage1.py --store $(DEMO_DIR)/lr.zarr
	$(PY) benchmarks/stage1_latent.py --store $(DEMO_DIR)/lr.zarr
	$(PY) benchmarks/stage2.py --vae runs/bench-stage1/checkpoints/latest --lr-store $(DEMO_DIR)/lr.zarr --steps 1000
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
