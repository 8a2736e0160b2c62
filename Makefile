# `make demo` runs a whole evaluation on this machine; `make test` runs the
# tests. Both first create .venv and install Assay into it, and reinstall
# only when pyproject.toml has changed since.

PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
# Options for `assay demo`, e.g. make demo DEMO_ARGS=--keep-running
DEMO_ARGS ?=

.PHONY: demo test install clean

demo: $(INSTALLED)
	$(VENV)/bin/assay demo $(DEMO_ARGS)

test: $(INSTALLED)
	$(VENV)/bin/pytest

install: $(INSTALLED)

# The venv is an order-only prerequisite: creating it must not count as a
# reason to reinstall.
$(INSTALLED): pyproject.toml | $(VENV)/bin/python
	@echo "Installing Assay and its dependencies into $(VENV)..."
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Leaves .assay/ alone: it may hold the demo's PostgreSQL data.
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
