# Two commands on a fresh machine: `make demo` (the whole pipeline on embedded data) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo demo-small test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/cvret demo --out demo_out

demo-small: install
	$(BIN)/cvret demo --small --out demo_out_small

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python scripts/bench.py

clean:
	rm -rf demo_out demo_out_small .pytest_cache
