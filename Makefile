# The two commands a new user needs: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed-dev

.PHONY: demo test install lint bench clean image image-check lock

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

# The GPU-host image, built with podman (root; installs podman when missing): see the README's Docker section.
image:
	bash scripts/image_check.sh --build-only

image-check:
	bash scripts/image_check.sh

# The image's pinned dependencies, for Linux x86_64 and Debian bookworm's Python 3.11; needs uv (pip install uv).
# setuptools and wheel are in it because the image builds its wheel without build isolation.
lock:
	printf 'setuptools>=77\nwheel\n' | uv pip compile pyproject.toml --extra diffusers - --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes \
		--custom-compile-command "make lock" -o requirements-image.lock

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
