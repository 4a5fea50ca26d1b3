# Two commands for a fresh machine: `make repro` (set up + run the pipeline), `make test` (set up + run the tests).
# Inside a container that already has the dependencies, use the system Python: `make repro VENV=`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(if $(VENV),$(VENV)/bin/,)
STAMP := $(if $(VENV),$(VENV),.)/.cxrstudy-installed
DEV_STAMP := $(if $(VENV),$(VENV),.)/.cxrstudy-dev-installed
BASE ?= origin/main
export PATH := $(if $(VENV),$(abspath $(VENV))/bin:,)$(PATH)
# The interpreter of the pipeline's stages (scripts/python) when make runs them: this environment's, whatever else
# is active.
repro study: export CXRSTUDY_PYTHON := $(if $(VENV),$(abspath $(VENV))/bin/python,python)

.PHONY: setup dev repro test test-all test-infra test-fast lint lock study metrics-diff clean-checkpoints

setup: $(if $(VENV),$(STAMP),)
# The locks are installed by docker/install-deps.sh, as in the images: every package checked against its hash. With
# TORCH_INDEX_URL set (CI sets PyTorch's CPU index), torch and torchvision come from there and the CUDA libraries are
# left out; by default everything comes from PyPI.
TORCH_INDEX_URL ?=
INSTALL_LOCK = PYTHON=$(BIN)python PIP_INSTALL_FLAGS=--quiet TORCH_INDEX_URL="$(TORCH_INDEX_URL)" docker/install-deps.sh cpu

$(STAMP): requirements.lock pyproject.toml docker/install-deps.sh
	$(if $(VENV),test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV),true)
	$(BIN)python -m pip install --quiet --upgrade pip
	$(INSTALL_LOCK) requirements.lock
	$(BIN)python -m pip install --quiet --no-deps -e .
	touch $@

dev: $(DEV_STAMP)
$(DEV_STAMP): $(STAMP) requirements-dev.lock
	$(INSTALL_LOCK) requirements-dev.lock
	touch $@

repro: setup  ## run the whole pipeline on the embedded sample
	$(BIN)python -m cxrstudy check-params
	# manifest looks at what a configured local copy holds outside the project; it is re-run first, every time, and
	# writes the same bytes when nothing changed (an always_changed stage would leave `dvc status` never clean).
	$(BIN)dvc repro --force --single-item manifest
	$(BIN)dvc repro

# The test files are shared out over TEST_WORKERS processes (pytest-xdist; --dist loadfile: a file's tests stay in one
# process, in their order). Most tests run one thread; TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
PYTEST = $(BIN)python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: dev  ## the test suite but the infrastructure tests (end-to-end runs included); lists the 20 slowest tests
	$(PYTEST) -m "not infra" --durations=20

test-all: dev  ## every test, the infrastructure ones too (image builds, act jobs, emulated CPUs, ...): what CI runs
	$(PYTEST) --durations=20

test-infra: dev  ## the infrastructure tests only (CI runs them after make test)
	$(PYTEST) -m infra --durations=20

test-fast: dev  ## the unit tests only (neither slow nor infra)
	$(PYTEST) -m "not slow and not infra"

lint: dev
	$(BIN)ruff check src tests benchmarks
	$(BIN)mypy src

study: setup  ## the real NIH study: apply configs/nih-study.yaml (only what it changes) as a DVC experiment
	$(BIN)python -m cxrstudy check-params --profile configs/nih-study.yaml
	$(BIN)dvc config --local cache.type hardlink,symlink
	$(BIN)python -m cxrstudy profile configs/nih-study.yaml --run

metrics-diff: setup  ## DVC metrics against $(BASE), as Markdown
	$(BIN)dvc metrics diff --md $(BASE)

# requirements.lock / requirements-dev.lock: every package pinned with its hashes (pip-tools), for CPython 3.11 on
# Linux x86_64, from PyPI. Edit requirements.txt / requirements-dev.txt, then `make lock`.
LOCK_FLAGS = --quiet --allow-unsafe --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
lock: export CUSTOM_COMPILE_COMMAND = make lock
lock: dev  ## regenerate the lock files from requirements.txt and requirements-dev.txt
	$(BIN)pip-compile $(LOCK_FLAGS) -o requirements.lock requirements.txt
	$(BIN)pip-compile $(LOCK_FLAGS) -o requirements-dev.lock requirements-dev.txt

clean-checkpoints:
	rm -rf checkpoints
