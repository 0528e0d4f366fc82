# egolab: set-up, demo and tests. Every target bootstraps .venv first (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO ?= expts/demo/localization.txt

.PHONY: venv demo test test-fast lint clean

venv: $(STAMP)

# Reinstall only when the pins change. sweeps/jsonref go in with --no-deps: sweeps declares numpy<2,
# which would downgrade numpy under pandas 3 (see shared specs/stack.md); it works with numpy 2.
$(STAMP): pyproject.toml requirements-nodeps.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: venv
	$(BIN)/python launch.py -c $(DEMO) -l

# Two pytest-xdist workers, a test file each at a time (a file's module fixtures run once); TEST_WORKERS=0
# runs the tests in this process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: venv
	$(PYTEST)

test-fast: venv
	$(PYTEST) -m "not slow"

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf OUTPUTS .pytest_cache
