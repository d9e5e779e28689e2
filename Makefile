# The two commands: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test test-unit venv data bench-train bench-denoise quality-train quality-sweep quality-natural quality-selfsup gpu-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Real Fashion-MNIST from Debian (optional; used by benchmarks and the quality sweep, not by tests).
data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  (command -v apt-get >/dev/null && (apt-get install -y -q dataset-fashion-mnist || \
	   (apt-get update -q && apt-get install -y -q dataset-fashion-mnist))) || \
	  echo "could not install dataset-fashion-mnist; the fashion-mnist source will be unavailable"

demo: $(STAMP)
	$(BIN)/python -m jobs.demo --out demo_out

# Lint first (ruff, configured in pyproject.toml), then both tiers of tests.
test: $(STAMP) data
	$(BIN)/ruff check dae jobs tests
	$(BIN)/python -m pytest -q --durations=40 tests

# The unit tier only: no Ray, no cluster, no S3 server (about a minute and a half on 2 cores). `make test` runs both tiers.
test-unit: $(STAMP)
	$(BIN)/ruff check dae jobs tests
	$(BIN)/python -m pytest -q tests/unit

# Benchmarks and quality checks: they print figures (never timed tests). Fashion-MNIST from `make data`.
bench-train: $(STAMP) data
	$(BIN)/python -m jobs.bench_train --data bench_out/fashion-mnist --work bench_out/train --images 20000 --epochs 2

bench-denoise: $(STAMP) data
	$(BIN)/python -m jobs.bench_denoise --work bench_out/denoise

quality-train: $(STAMP) data
	$(BIN)/python -m jobs.quality_train --data bench_out/fashion-mnist --out bench_out/quality --runs plain,job1,job2

# The README's quality table (about 2.5 h on 2 CPU cores; the full grid: --config quality-sweep on GPUs).
quality-sweep: $(STAMP) data
	$(BIN)/python -m jobs.quality_sweep --config quality-sweep-cpu --out bench_out/quality-sweep

# The natural-photo table (Set12, BSD68, CBSD68, Kodak24 at sigma 15/25/50 from ../shared/datasets/natural):
# trains every run of dae/experiments/recipes/quality-natural.yaml (gray-blind and color-blind, recipe-2:
# about 2 h each on 2 CPU cores; the first shipped ones and a sigma-25 gray one: 22-100 min each; a finished
# run is reused), then scores them
# plain and x8 (self-ensemble), NLM and BM3D (the bm3d extra, first 8 images per set) beside the published
# figures.
quality-natural: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bm3d]'
	$(BIN)/python -m jobs.quality_natural --out bench_out/quality-natural

# The self-supervised table: one U-Net trained on CBSD432 at sigma 25 by supervised, n2n, nb2nb and n2v (the
# same time: 16 epochs, nb2nb 24, 22-31 min each on 2 CPU cores, about 2 h with scoring; a finished run is
# reused, or continued with more epochs), scored on Kodak24 and CBSD68 beside CBM3D (first 8 images) and the
# Neighbor2Neighbor paper's figures.
quality-selfsup: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bm3d]'
	$(BIN)/python -m jobs.quality_selfsup --out bench_out/quality-selfsup

# The GPU path on a real GPU (1 GPU + 16 CPUs, a few minutes): train, denoise, agreement checks; figures in
# gpu_check_out/gpu_check.json. CPU dry run: $(BIN)/python -m jobs.gpu_check --device cpu --small
gpu-check: $(STAMP)
	$(BIN)/python -m jobs.gpu_check --out gpu_check_out

clean:
	rm -rf demo_out bench_out gpu_check_out .pytest_cache
