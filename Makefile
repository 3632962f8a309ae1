# The two commands a new user needs (see README.md):
#   make demo   set up and run the local demo campaign
#   make test   set up and run the test suite
#   make console  the web console on a local coordinator running the demo campaign
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean console

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nnmd demo

console: $(STAMP)
	bash scripts/console.sh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow and not gpu" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/kernels.py

clean:
	rm -rf $(VENV) nnmd-demo nnmd-console .pytest_cache
