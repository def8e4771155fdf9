# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: install demo test lint clean

install: $(VENV)/.installed

# torch is installed first, pinned, so that pip takes the CPU build and never a CUDA one.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	@test -f $(DEMO)/sample/dataset_description.json || $(BIN)/bids_dl-sample --small $(DEMO)/sample
	$(BIN)/bids_dl $(DEMO)/sample $(DEMO)/output participant -w $(DEMO)/work
	$(BIN)/bids_dl $(DEMO)/sample $(DEMO)/output group --classify diagnosis --features left_ right_ --covariates age

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean:
	rm -rf $(DEMO) work .pytest_cache
