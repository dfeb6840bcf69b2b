#!/usr/bin/env bash
# The device check (BUILD_NOTES "On a GPU"): launch/gpu/prepare.sh first, then from the repo root
# on the GPU machine: bash launch/gpu/run.sh (results under $OUT). `bench distill` and `bench
# decode` on the accelerator with random weights of the real shapes, and the cuDNN attention check.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD MKD_JAX_CACHE=/tmp/mkdc
mkdir -p $MKD_JAX_CACHE/models && cp -r .gpu/models/. $MKD_JAX_CACHE/models/
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax, transformers, torch, peft; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, 'peft', peft.__version__)"
  python3 launch/gpu/random_weights.py $MKD_JAX_CACHE/models; } 2>&1 | tee $OUT/env.txt
timeout 120 python3 launch/gpu/attn_check.py 2>&1 | grep -v Warning | tee $OUT/attn.txt
timeout ${DISTILL_S:-330} python3 -m mkd_jax.bench distill --distill_batch=${BATCH:-32} \
  --rounds=3 --audio='.gpu/clips/*.flac' 2>&1 | grep -v Warning | tee $OUT/distill.txt
[ -n "${SKIP_DECODE:-}" ] || timeout ${DECODE_S:-170} python3 -m mkd_jax.bench decode --models=tiny.en,base \
  --batch_sizes=16 --clips=16 --rounds=3 --audio='.gpu/clips/*.flac' 2>&1 | tee $OUT/decode.txt
