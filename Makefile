# Two commands matter: `make demo` and `make test` (see README). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench plan clean

$(STAMP): pyproject.toml service/requirements.txt requirements/model.txt requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[service,model,dev]'
	touch $(STAMP)

## The main job on embedded defaults: no cloud account, credentials or Pulumi CLI.
demo: $(STAMP)
	$(BIN)/stagectl demo

## The whole test suite, including the system packages and servers it needs.
test: $(STAMP)
	scripts/install-test-deps.sh
	$(MAKE) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	scripts/install-test-deps.sh
	$(BIN)/python bench/service.py --json --triton
	$(BIN)/python bench/migrate.py --json

plan: $(STAMP)
	$(BIN)/stagectl plan mvp

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
