# Two commands matter: `make demo` and `make test` (see README). Both install exactly the lock files
# (scripts/venv.sh); `make lock` refreshes them after a dependency change.
PYTHON ?= python3
export PYTHON
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench plan lock lock-check venv venv-dev clean

## .venv for the demo and for `pulumi up`: the project and the service (requirements.txt).
venv:
	scripts/venv.sh runtime

## .venv for the tests: the runtime plus the model build, test servers, linters (requirements/dev.txt).
venv-dev:
	scripts/venv.sh dev

## The main job on embedded defaults: no cloud account, credentials or Pulumi CLI.
demo: venv
	$(BIN)/stagectl demo

## The whole test suite, including the system packages and servers it needs.
test: venv-dev
	scripts/install-test-deps.sh
	$(MAKE) lock-check lint typecheck unit

lint: venv-dev
	$(BIN)/ruff check .

typecheck: venv-dev
	$(BIN)/mypy

unit: venv-dev
	$(BIN)/pytest

## Offline: fails if a lock file is older than the dependency lists it was resolved from.
lock-check:
	$(PYTHON) scripts/lock.py --check

## Re-resolve the locks after changing pyproject.toml, requirements/*.in or service/requirements*.in
## (keeps every pin that still fits); `make lock UPGRADE=1` moves every pin to the newest release.
lock: venv-dev
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

bench: venv-dev
	scripts/install-test-deps.sh
	$(BIN)/python bench/service.py --json --triton
	$(BIN)/python bench/migrate.py --json

plan: venv
	$(BIN)/stagectl plan mvp

clean:
	rm -rf $(VENV) .venv-tf .venv-triton .venv-kserve build .mypy_cache .ruff_cache .pytest_cache
