# pola_mm developer entry points. Every target sets up .venv first (idempotent, fast
# when nothing changed; see tools/setup_env.sh).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo lint test test-all

setup:
	bash tools/setup_env.sh

# The main job: train and evaluate a Pola-backbone detector on generated data (CPU).
demo: setup
	$(PY) tools/demo/shapes_detection.py

# Lint: ruff (ruff.toml) and isort's import order (setup.cfg); `.venv/bin/isort .` and
# `.venv/bin/ruff check --fix .` mend what they can.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/isort --check-only --diff .

# pytest exits 5 when it collects no test; that is not a failure of the set-up.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# Also the checks marked slow (minutes each).
test-all: setup
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)
