# Quick start: `make sweep` (set-up, then the smoke sweep on the embedded digits data)
# and `make test` (set-up, then the whole test suite). Both work on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test sweep demo report bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest

sweep: setup
	$(PY) -m lth_core draw --width 0.25 --epochs 8 --levels 5 --batch-size 64
	$(PY) -m lth_core spend --width 0.25 --epochs 8 --levels 5 --batch-size 64 --level 5

demo: sweep

bench: setup
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache
