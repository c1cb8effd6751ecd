#!/usr/bin/env bash
# One command for the GPU machine: install the carried wheels (bench/gpu_wheels.sh made .whl/),
# then the product lane (bench/gpu_lane.py, ~3 min) and/or the LLM arm sets
# (bench/torch_llm_vs_peft.py --sets full,chats, ~8 min). Evidence goes to $OUT.
#
#   bash bench/gpu_run.sh lane     # carry: [".whl"]
#   bash bench/gpu_run.sh bench
#   bash bench/gpu_run.sh all      # both in one call: the bench's budget cut to 150 s (full set)
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/daemon:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "cuda", torch.cuda.is_available())'
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
status=0
if [[ $what == lane || $what == all ]]; then
  timeout "$([[ $what == all ]] && echo 300 || echo 540)" python3 bench/gpu_lane.py --out "$out" \
    2>&1 | tee "$out/lane.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if [[ $what == bench || $what == all ]]; then
  budget=${BENCH_BUDGET_S:-$([[ $what == all ]] && echo 150 || echo 420)}
  timeout $((budget + 150)) python3 bench/torch_llm_vs_peft.py --sets full,chats --steps 30 \
    --warmup 10 --budget-s "$budget" --out "$out/llm-sets.json" 2>&1 | tee "$out/bench.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
exit $status
