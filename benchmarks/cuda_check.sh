#!/usr/bin/env bash
# One short prepared check for a machine with an NVIDIA GPU (a few minutes): CUDA tests of the method,
# then train_vae throughput on a simulated set on CUDA with and without mixed precision, and on the
# CPU for comparison. Run from the repository root with the virtualenv built (make venv) and a CUDA
# build of torch in it. Prints figures; exits non-zero if a step fails.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))"
"$PY" -m tomodrgn_scipion.method.cli simulate -o "$OUT/sim" -n 400 --particles-per-tomogram 50 --seed 0 > /dev/null
for dev in "cuda" "cuda --no-amp" "cpu"; do
  echo "== train_vae on $dev"
  # shellcheck disable=SC2086
  "$PY" benchmarks/train_throughput.py "$OUT/sim/particles.star" --epochs 3 --device $dev | grep -E "s/epoch|peak"
done
echo "== CUDA backproject and determinism of inference"
"$PY" -m tomodrgn_scipion.method.cli backproject "$OUT/sim/particles.star" -o "$OUT/bp/map.mrc" --device cuda | grep FSC
"$PY" -m tomodrgn_scipion.method.cli train_vae "$OUT/sim/particles.star" -o "$OUT/vae" --zdim 2 -n 1 --device cuda > /dev/null
for i in 1 2; do
  "$PY" -m tomodrgn_scipion.method.cli eval_images "$OUT/sim/particles.star" -w "$OUT/vae/weights.pt" \
    -c "$OUT/vae/config.json" --out-z "$OUT/z$i.npy" --device cuda > /dev/null
done
"$PY" -c "import numpy as np, sys; a, b = (np.load(sys.argv[k]) for k in (1, 2)); print('eval_images twice on CUDA, max |dz| =', float(abs(a - b).max()))" "$OUT/z1.npy" "$OUT/z2.npy"
