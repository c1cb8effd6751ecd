#!/usr/bin/env bash
# One command for the GPU machine: install the carried wheels (bench/gpu_wheels.sh made .whl/),
# then the product lane (bench/gpu_lane.py, ~3 min) and/or the LLM arm sets
# (bench/torch_llm_vs_peft.py --sets full,chats, ~8 min). Evidence goes to $OUT.
#
#   bash bench/gpu_run.sh lane     # carry: [".whl"]
#   bash bench/gpu_run.sh bench
#   bash bench/gpu_run.sh all      # both in one call: the bench's budget cut to 150 s (full set)
#   bash bench/gpu_run.sh profile  # where the full-sequence step's time goes (~3 min)
#   bash bench/gpu_run.sh sd       # bench/sd_lora_vs_diffusers.py, SD 1.5 and SDXL
#   bash bench/gpu_run.sh bench,profile   # several in one call, in this order
#
# WHEELS=DIR takes the wheels from DIR instead of .whl; a DIR/site.tar.xz is unpacked beside them
# (Unsloth and its needs, pre-installed and slimmed to fit a call's 64 MiB: see
# bench/torch_llm_vs_peft.py). BENCH_SETS picks the LLM settings (default full,chats).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$wheels"/*.whl || exit 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ -f $wheels/site.tar.xz && ! -d /tmp/site/unsloth ]]; then
  tar -C /tmp/site -xJf "$wheels/site.tar.xz" || exit 3
fi
export PYTHONPATH=$PWD/daemon:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "cuda", torch.cuda.is_available())'
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
status=0
wants() { [[ ,$what, == *,$1,* || $what == all && ($1 == lane || $1 == bench) ]]; }
if wants lane; then
  timeout "$([[ $what == all ]] && echo 300 || echo 540)" python3 bench/gpu_lane.py --out "$out" \
    2>&1 | tee "$out/lane.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if wants bench; then
  budget=${BENCH_BUDGET_S:-$([[ $what == all ]] && echo 150 || echo 420)}
  timeout $((budget + 150)) python3 bench/torch_llm_vs_peft.py --sets "${BENCH_SETS:-full,chats}" \
    --steps 30 --warmup 10 --budget-s "$budget" ${BENCH_ARGS:-} \
    --out "$out/${BENCH_OUT:-llm-sets}.json" 2>&1 | tee "$out/${BENCH_OUT:-bench}.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if wants profile; then
  timeout 400 python3 bench/torch_llm_step_profile.py --setting full --steps 20 \
    --variants "${PROFILE_VARIANTS:-compiled,compiled-cudagraphs}" --out "$out/profile-full.json" \
    2>&1 | tee "$out/profile.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if wants sd; then
  timeout 560 python3 bench/sd_lora_vs_diffusers.py ${SD_ARGS:-} --out "$out/sd.json" \
    2>&1 | tee "$out/sd.txt"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
exit $status
