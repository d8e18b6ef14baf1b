# Entry points. The README documents them; every target sets up what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
BUILD     ?= build
MODEL     ?=
DEVICE    ?= auto
DTYPE     ?=
INT8      ?= 0
FP8       ?= 0
W8A8      ?= 0
KV_CACHE_DTYPE ?=
HOST      ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
OPENAI_PORT ?= 9000
OPENAI_WORKERS ?= 1
GPUS      ?=
JOBS      ?= $(shell nproc)
export VENV BUILD MODEL DEVICE DTYPE INT8 FP8 W8A8 KV_CACHE_DTYPE HOST HTTP_PORT GRPC_PORT METRICS_PORT OPENAI_PORT \
	OPENAI_WORKERS GPUS JOBS

SETUP_STAMP := $(VENV)/.setup-done
DEMO_MODEL  := models/chatglm-tiny/model.safetensors

.PHONY: help setup build demo-model model serve test test-random test-gpu mutation-test bench gpu load-test docker lint format clean

help:
	@echo "make serve      set everything up (first run) and serve the demo model, or MODEL=<dir>"
	@echo "make test       the CPU test suite (what CI runs)"
	@echo "make test-random  the CPU suite in random order (SEED=N to repeat an order)"
	@echo "make test-gpu   GPU tests (on a machine with an NVIDIA GPU)"
	@echo "make mutation-test  apply tests/mutants.toml's bugs one by one; each must fail a test"
	@echo "make bench      engine benchmark on the GPU (INT8=1 adds int8 rows, W8A8=N int8 rows with"
	@echo "                W8A8 from N tokens, FP8=1 fp8 rows, KV_CACHE_DTYPE=fp8 fp8-KV rows)"
	@echo "make gpu        GPU tasks of scripts/gpu.sh (TASKS=\"kernels tests bench\"; docs/gpu_tasks.md)"
	@echo "make load-test  Locust against a running server (USERS, SPAWN_RATE, DURATION, PROMPTS)"
	@echo "make model      download THUDM/chatglm-6b and convert it (INT8=1 for int8, FP8=1 for fp8)"
	@echo "make demo-model write the tiny demo checkpoint to models/chatglm-tiny"
	@echo "make docker     build the container image"
	@echo "make openai     the OpenAI-compatible API alone, in front of a running server"
	@echo "                (make serve starts it too, on OPENAI_PORT, default 9000)"

setup: $(SETUP_STAMP)
$(SETUP_STAMP): requirements.txt requirements-cuda-build.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

build: $(SETUP_STAMP)
	bash scripts/build.sh

demo-model: $(DEMO_MODEL)
$(DEMO_MODEL): $(SETUP_STAMP)
	$(PY) -m glmserve.tiny --out models/chatglm-tiny

model: $(SETUP_STAMP)
	$(PY) -m glmserve.hub --out models/chatglm-6b $(if $(filter 1,$(INT8)),--int8,) $(if $(filter 1,$(FP8)),--fp8,)

serve: $(SETUP_STAMP) build demo-model
	bash scripts/serve.sh

# The OpenAI-compatible API alone (make serve starts it too), in front of a running
# tritonserver on HTTP_PORT; MODEL: the converted checkpoint it serves (its tokenizer).
.PHONY: openai
openai: $(SETUP_STAMP) demo-model
	$(PY) -m glmserve.openai_api --checkpoint $(or $(MODEL),models/chatglm-tiny) \
		--triton-url 127.0.0.1:$(HTTP_PORT) --host $(HOST) --port $(OPENAI_PORT) \
		--workers $(OPENAI_WORKERS)

test: $(SETUP_STAMP) build demo-model
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -rs -m "not gpu" tests

SEED      ?= $(shell date +%s)
test-random: $(SETUP_STAMP) build demo-model
	$(VENV)/bin/pytest -rs -m "not gpu" -p randomly --randomly-seed=$(SEED) tests

# Not in CI (it rebuilds and reruns tests once per mutant): see glmserve/mutation.py.
mutation-test: $(SETUP_STAMP) build demo-model
	$(PY) -m glmserve.mutation $(if $(MUTANTS),--only $(MUTANTS),)

test-gpu: $(SETUP_STAMP) build demo-model
	$(VENV)/bin/pytest -m gpu tests

bench: $(SETUP_STAMP) build
	$(PY) -m glmserve.bench $(if $(filter 1,$(INT8) $(FP8)),--int8,) $(if $(filter 1,$(FP8)),--fp8,) \
		$(if $(filter-out 0,$(W8A8)),--int8 --w8a8 $(W8A8),) $(if $(filter fp8,$(KV_CACHE_DTYPE)),--int8 --kv-fp8,)

# GPU tasks with make's venv and Python; the build goes to $(BUILD)/gpu (docs/gpu_tasks.md)
TASKS ?= check
gpu: $(SETUP_STAMP)
	PYTHON=$(PY) BUILD=$(BUILD)/gpu bash scripts/gpu.sh $(TASKS)

load-test: $(SETUP_STAMP)
	bash scripts/load_test.sh

docker:
	docker build -f docker/Dockerfile -t glmserve:latest .

lint: $(SETUP_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(SETUP_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(BUILD)
