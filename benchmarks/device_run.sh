#!/usr/bin/env bash
# The benchmarks and the CUDA tests on a GPU machine (no network, no install
# there: the image's python3 with its torch, JAX and numba; rulegen from this
# checkout through PYTHONPATH). Writes into $OUT (or ./out). Each part has
# its own time limit (seconds, from the environment) and can be left out
# with 0: T_TESTS, T_JAX, T_TORCH, T_BATCH.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi -L
  nproc
  python3 -c "import torch, jax, numba; print('torch', torch.__version__, torch.cuda.is_available(), '| jax', jax.__version__, jax.devices(), '| numba', numba.__version__, numba.config.NUMBA_NUM_THREADS, 'threads')"
} > "$OUT/device.txt" 2>&1
part() {   # part LIMIT FILE COMMAND...
  local limit=$1 file=$2; shift 2
  [ "$limit" = 0 ] || timeout "$limit" "$@" > "$OUT/$file" 2>&1
}
part "${T_TESTS:-150}" cuda_tests.txt python3 -m pytest -q -p no:cacheprovider \
  tests/test_torch_target.py tests/test_complex.py -k "cuda or CUDA"
part "${T_JAX:-200}" jax_gpu_float32.txt python3 benchmarks/jax_target.py
part "${T_TORCH:-200}" torch_gpu_float32.txt python3 benchmarks/torch_target.py --device cuda --dtype float32 --min-time 0.05
part "${T_BATCH:-200}" batch_host.txt python3 benchmarks/batch.py
tail -n 4 "$OUT"/*.txt
