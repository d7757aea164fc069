# The two commands a new user needs: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed-dev

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,diffusers]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@echo "Serving the bundled MNIST model on http://$(HOST):$(PORT)  (Ctrl-C to stop)"
	$(BIN)/ddpm serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Each prints a markdown table; BENCHMARKS.md records them with the machine they ran on.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_diffusers.py
	$(BIN)/python benchmarks/bench_server.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
