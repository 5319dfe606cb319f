#!/usr/bin/env bash
# One prepared GPU benchmark run (H200): tinyrm vs transformers (SDPA) and transformers + peft (DoRA),
# ModernBERT-large shape (hidden 1024, 28 layers, 16 heads, intermediate 2624), bf16. Writes
# bench/results/gpu.md (and a JSON beside it), copied to $OUT when that is set. Budget: < 8 minutes.
#
#   bash bench/gpu.sh                      # from the repository root, on the GPU machine
#
# Needs torch, transformers, peft, safetensors, tokenizers, numpy, tqdm already installed (nothing is
# downloaded). Wheels for anything missing may be carried in .whl/ (installed with --no-index). Inputs:
# ./shared or $TINYRM_SHARED data when present, else random ids with the recorded RewardBench / UltraFeedback
# token lengths (bench/results/lengths.json); tokenizer: weights/minilm-l6/tokenizer.json when carried,
# else a built-in word-level one (timing does not depend on it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
START=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the package itself (tinyrm + tinyrm.kernels), no dependencies, no network (build isolation would fetch setuptools)
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
  || "$PY" -m pip install -q --no-deps --no-build-isolation .
"$PY" -c "import torch, transformers, peft, tinyrm.kernels; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| peft', peft.__version__, '| gpu', torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true

mkdir -p bench/results
status=0
# the run itself is sized for ~3-4 minutes; the timeout keeps the whole script under 8
timeout 420 "$PY" bench/gpu.py --device cuda --out bench/results/gpu.md --json bench/results/gpu.json "$@" \
  2>&1 | tee bench/results/gpu.log || status=$?

if [ -n "${OUT:-}" ]; then
  cp bench/results/gpu.md bench/results/gpu.json bench/results/gpu.log "$OUT"/ 2>/dev/null || true
fi
echo "gpu.sh: exit $status after $(( $(date +%s) - START )) s"
exit $status
