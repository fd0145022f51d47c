# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench clean screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: create the database, import the sample members and items, send the issue into var/outbox/
demo: $(STAMP)
	$(BIN)/newsletter demo

## test: the whole suite (SQLite always; PostgreSQL when reachable, required when CI=true), in
## two worker processes: most tests wait on sockets and subprocesses, so two share the cores well
test: $(STAMP)
	$(BIN)/pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check newsletter tests bench
	$(BIN)/ruff format --check newsletter tests bench

typecheck: $(STAMP)
	$(BIN)/mypy newsletter tests bench

check: lint typecheck test

## screenshots: the desk's pages at 1280 and 375 px, and the demo issue at 375 px (with and
## without <style>) and 600 px, light and dark, into docs/screenshots/ (axe-core from npm)
screenshots: $(STAMP)
	npm ci --prefix tests --no-audit --no-fund --loglevel=error
	NEWSLETTER_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/test_desk_look.py tests/test_email_look.py -m "not postgres"

bench: $(STAMP)
	$(BIN)/python bench/compile.py

clean:
	rm -rf var/outbox var/preview var/newsletter.db var/newsletter.db-wal var/newsletter.db-shm
