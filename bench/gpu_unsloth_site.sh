#!/usr/bin/env bash
# Unsloth and what the GPU machine lacks of its needs, for bench/torch_llm_vs_peft.py's unsloth
# arm, as one pre-installed site in .ubench/site.tar.xz (~44 MB) beside the lane's small wheels:
# a call carries at most 64 MiB, and the wheels alone are ~140 MB. Slimmed: Unsloth without its
# studio web app, bitsandbytes with only the CUDA 13.0 library (the machine's torch is cu130),
# pyarrow without Flight and S3, duplicate shared libraries made links. No xformers: PyPI's
# newest is built for another torch. Run it here, then `WHEELS=.ubench bash bench/gpu_run.sh
# bench` there with carry [".ubench"].
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
dl=$(mktemp -d) site=$(mktemp -d)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pick=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}")
"$python" -m pip download -q "${pick[@]}" -d "$dl" \
  unsloth==2026.10.9 unsloth-zoo==2026.10.9 bitsandbytes==0.50.2 torchao==0.18.0 trl==1.15.0 \
  "datasets<5" pyarrow==26.0.1 pandas==2.3.3 tyro==1.0.16 cut-cross-entropy==25.1.1 \
  msgspec==0.22.0 xxhash==4.1.0 multiprocess==0.70.19 dill==0.4.1 docstring-parser==0.18.0 \
  typeguard hf-transfer==0.1.9 json5 structlog nest-asyncio einops diffusers==0.42.1
"$python" -m pip install -q "${pick[@]}" --no-compile --target "$site" "$dl"/*.whl
rm -rf "$site"/studio "$site"/unsloth/studio "$site"/bin "$site"/pyarrow/{include,tests} \
  "$site"/pandas/tests "$site"/pyarrow/{libarrow_flight,libarrow_s3,_flight,_s3fs}*
find "$site"/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cpu*' -delete
find "$site" -name __pycache__ -prune -exec rm -rf {} +
"$python" - "$site/pyarrow" <<'PY'
import hashlib, os, sys
from pathlib import Path
first: dict[str, str] = {}
for lib in sorted(Path(sys.argv[1]).glob("*.so*"), key=lambda p: -len(p.name)):
    digest = hashlib.sha256(lib.read_bytes()).hexdigest()
    if digest in first:
        lib.unlink()
        os.symlink(first[digest], lib)
    else:
        first[digest] = lib.name
PY
mkdir -p .ubench
grep -qx '/.ubench/' .git/info/exclude 2>/dev/null || echo /.ubench/ >>.git/info/exclude
tar -C "$site" -cJf .ubench/site.tar.xz .
"$python" -m pip download -q "${pick[@]}" -d .ubench pytz tzdata importlib-metadata zipp
find .whl -name '*.whl' ! -name 'llama_cpp*' -exec cp {} .ubench/ \; 2>/dev/null || true
rm -rf "$dl" "$site"
du -sh .ubench
