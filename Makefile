# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Users bring their own torch; this pair installs from local disk on the development machines.
TORCH ?= torch==2.14.1 torchvision==0.29.1
DATA ?= ../shared/data/mvtec_ad
CATEGORY ?= bottle
DEMO_ARGS ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

BIN := $(VENV)/bin

.PHONY: setup test test-fast demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Tests run in TEST_WORKERS parallel processes (pytest-xdist, one thread each); TEST_WORKERS=0 runs them in one.
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The edit-run loop: everything but the end-to-end runs marked slow (CI runs `make test`).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/python examples/demo.py --data $(DATA) --category $(CATEGORY) --output results/demo $(DEMO_ARGS)

clean:
	rm -rf results .pytest_cache
