# Two commands for a newcomer: `make run` (install + start Parley) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: run test lint check install install-dev clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[engine]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e '.[engine,dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make run: install, then start everything (embedded Redis, engine, web chat on :8080)
run: install
	$(BIN)/parley run

## make test: lint, type-check and run the whole suite (installs what the tests need)
test: install-dev
	bash scripts/install-browser.sh
	$(MAKE) --no-print-directory check
	$(BIN)/pytest -q

check:
	$(BIN)/ruff check bot engine adapters tests bench
	$(BIN)/ruff format --check bot engine adapters tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
