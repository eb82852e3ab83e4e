# anomaly-agent: `make demo` and `make test` each work alone on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test demo bench lint clean gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,ray]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

demo: setup
	$(PY) -m evals.demo

bench: setup
	$(PY) -m evals.bench.all

# The model path on a GPU machine: serve-model + eval (openai, none, direct) + one compare report.
# GPU_MODEL is a HF id or a local path; against a running server: make gpu-check GPU_CHECK_ARGS="--base-url URL"
GPU_MODEL ?= Qwen/Qwen3-VL-8B-Instruct
GPU_CHECK_ARGS ?=
gpu-check: setup
	$(PY) -m evals.gpu_check $(GPU_MODEL) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
