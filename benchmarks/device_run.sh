#!/usr/bin/env bash
# The JAX and PyTorch benchmarks and the CUDA tests on a GPU machine (no
# network, no install there: the image's python3 with its torch and JAX;
# rulegen from this checkout through PYTHONPATH). Writes into $OUT (or ./out).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi -L
  python3 -c "import torch, jax; print('torch', torch.__version__, torch.cuda.is_available(), '| jax', jax.__version__, jax.devices())"
} > "$OUT/device.txt" 2>&1
timeout "${T_TESTS:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_torch_target.py -k "cuda or CUDA" \
  > "$OUT/cuda_tests.txt" 2>&1
timeout "${T_JAX:-200}" python3 benchmarks/jax_target.py > "$OUT/jax_gpu_float32.txt" 2>&1
timeout "${T_TORCH:-200}" python3 benchmarks/torch_target.py --device cuda --dtype float32 --min-time 0.05 \
  > "$OUT/torch_gpu_float32.txt" 2>&1
tail -n 3 "$OUT"/*.txt
