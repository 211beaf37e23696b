# emotion-ssl: two commands, `make demo` and `make test`; both (re)create .venv from pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint imports typecheck pytest clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (emotion-ssl needs Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/emotion-ssl demo

lint: $(STAMP)
	$(BIN)/ruff check emotion_ssl data_prep tests benchmarks
	$(BIN)/ruff format --check emotion_ssl data_prep tests benchmarks

# the layer contracts in pyproject.toml ([tool.importlinter]; docs/architecture.md, "Layers")
imports: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint imports typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
