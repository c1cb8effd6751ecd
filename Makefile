# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first: on this project's Linux machines ==2.13.0 resolves to a local CPU build; a bare
# `torch` pulled in by another package would fetch a multi-GB CUDA build instead.
TORCH ?= torch==2.13.0
LLAMA_CPP ?= llama-cpp-python==0.3.36
# llama-cpp-python has no wheel on PyPI: pip builds llama.cpp (about 4-8 minutes on 2 cores).
# The built wheel is kept here, so every later venv (and CI on the same machine) reuses it.
WHEELS ?= $(HOME)/.cache/lorainbox/wheels
UNAME := $(shell uname)
ifeq ($(UNAME),Linux)
LLAMA_CMAKE := -DGGML_NATIVE=OFF
endif

.PHONY: demo test install lint bench clean chromium

demo: $(VENV)/.installed
	$(BIN)/lorainbox demo

test: $(VENV)/.installed-dev chromium
	$(BIN)/python -m pytest -q

# The status page is tested in a real headless browser: Debian's Chromium on Linux (no browser
# download), Playwright's own Chromium on macOS.
chromium: $(VENV)/.installed-dev
ifeq ($(UNAME),Linux)
	@command -v chromium >/dev/null 2>&1 || { echo "Installing Chromium for the status-page test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }
else
	$(BIN)/python -m playwright install chromium
endif

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

install: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel

$(VENV)/.llama-cpp: $(BIN)/python
	@mkdir -p $(WHEELS)
	@if ! ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
		echo "Building llama-cpp-python once (minutes); the wheel is cached in $(WHEELS)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/python -m pip wheel -q --no-deps -w $(WHEELS) "$(LLAMA_CPP)"; \
	fi
	$(BIN)/python -m pip install -q --find-links $(WHEELS) "$(LLAMA_CPP)"
	@touch $@

$(VENV)/.torch: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch $(VENV)/.llama-cpp
	$(BIN)/python -m pip install -q --find-links $(WHEELS) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q --find-links $(WHEELS) -e ".[dev]"
	@touch $@

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/mlx_vs_mlx_lm.py

clean:
	rm -rf $(VENV) .demo .pytest_cache
