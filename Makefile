# Two commands on a fresh machine with only Python (and make):
#   make serve   start threadlog on its embedded defaults (SQLite, NATS from the wheel, demo model)
#   make test    the whole test suite: ruff, layering, mypy --strict, pytest (real PostgreSQL and NATS)
# Both create .venv and install the project into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
LAYERS := domain projections http infra

.PHONY: serve test lint typecheck pytest bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(INSTALLED)

serve: $(INSTALLED)
	$(BIN)/threadlog serve

test: lint typecheck pytest

# The layering contract (docs/layout.md): a wrong import fails here with its chain.
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m tests.layering

# mypy cannot follow the editable install's import hook: it checks a staging folder
# of symlinks threadlog/<layer> -> ../../<layer> instead (docs/layout.md).
typecheck: $(INSTALLED)
	@mkdir -p .typecheck/threadlog
	@for layer in $(LAYERS); do ln -sfn ../../$$layer .typecheck/threadlog/$$layer; done
	$(BIN)/mypy .typecheck/threadlog tests $(wildcard bench) $(wildcard examples)

# Three workers, a file each at a time: the suite mostly waits on servers and sockets,
# so it runs about three times faster even on two cores. Each worker starts its own
# throwaway servers (unless THREADLOG_TEST_* name them). PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 3
pytest: $(INSTALLED)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

bench: $(INSTALLED)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .typecheck .mypy_cache .ruff_cache .pytest_cache build *.egg-info
