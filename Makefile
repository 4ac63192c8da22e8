# Two commands do everything:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install lint serve clean

$(BIN)/mailer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/mailer

install: $(BIN)/mailer

## Start the whole system on the embedded default (SQLite, in-process broker, capture relay)
## with demo data; prints the admin credentials.
demo: install
	$(BIN)/mailer demo --serve

serve: install
	$(BIN)/mailer serve

## Lint and type gates, then the whole test suite (PostgreSQL/Redis/Chromium tests run
## where those are present, are skipped otherwise, and are required when CI=true).
test: install lint
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check mailer tests scripts
	$(BIN)/ruff format --check --quiet mailer tests scripts
	$(BIN)/mypy mailer
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
