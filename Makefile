# Quick start: `make sweep` (set-up, then the smoke sweep on the embedded digits data)
# and `make test` (set-up, then the whole test suite). Both work on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# One OpenMP thread per process: on few cores, spinning threads of concurrent trials slow
# small models down by orders of magnitude. Ray gives each trial its own thread count.
export OMP_NUM_THREADS ?= 1

.PHONY: setup test sweep optuna report report-optuna bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) tests/chromium.py
	$(PY) -m pytest -n 2 --dist loadgroup

sweep: setup
	$(PY) sweeps/full_grid.py --preset smoke

optuna: setup
	$(PY) sweeps/optuna_search.py --preset smoke

report: setup
	$(PY) -m dashboards.report --experiment smoke

report-optuna: setup
	$(PY) -m dashboards.report --experiment smoke-optuna

bench: setup
	$(PY) benchmarks/throughput.py && $(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) artifacts reports analysis mlflow.db mlartifacts optuna.db ray_results .pytest_cache
