# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench clean screenshots translations

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

## translations: extract the messages of the templates and the package (babel.cfg), merge them
## into every catalog (newsletter/locale/*/LC_MESSAGES/messages.po), check each compiles, and
## check none lacks a translation (docs/translations.md)
translations: $(STAMP)
	mkdir -p var
	$(BIN)/pybabel extract -F babel.cfg -k N_ --no-location --sort-output -w 100 -o var/messages.pot .
	$(BIN)/pybabel update -i var/messages.pot -d newsletter/locale -D messages -w 100 --ignore-obsolete
	for po in newsletter/locale/*/LC_MESSAGES/messages.po; do \
	  lang=$$(basename $$(dirname $$(dirname $$po))); \
	  $(BIN)/pybabel compile -i $$po -o var/messages-$$lang.mo -l $$lang --statistics || exit 1; \
	done
	$(BIN)/pytest -q -n 0 tests/test_translations.py

bench: $(STAMP)
	$(BIN)/python bench/compile.py

clean:
	rm -rf var/outbox var/preview var/newsletter.db var/newsletter.db-wal var/newsletter.db-shm
