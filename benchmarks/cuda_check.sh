#!/usr/bin/env bash
# One short prepared check for a machine with an NVIDIA GPU (a few minutes): the method's tests with
# CUDA present (device "auto" then means CUDA, and tests/method/test_cuda.py compares CUDA with the
# CPU), train_vae throughput on a simulated set on CUDA with and without mixed precision and on the
# CPU, and the acceptance run on the tomoDRGN sample on CUDA when SAMPLE points at it. Run from the
# repository root with a CUDA build of torch in $PY. Prints figures; LOG (a folder) keeps the logs.
set -uo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
LOG=${LOG:-$OUT}
SAMPLE=${SAMPLE:-../shared/data/tomodrgn-sample-10076}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
echo "== method tests with CUDA present"
TOMODRGN_SAMPLE_DIR=$SAMPLE timeout 240 "$PY" -m pytest tomodrgn_scipion/tests/method -q -p no:cacheprovider \
  -x --deselect tomodrgn_scipion/tests/method/test_training.py::test_vae_learns_the_two_states 2>&1 \
  | tee "$LOG/pytest.log" | tail -25
"$PY" -m tomodrgn_scipion.method.cli simulate -o "$OUT/sim" -n 400 --particles-per-tomogram 50 --seed 0 > /dev/null
for dev in "cuda" "cuda --no-amp" "cpu"; do
  echo "== train_vae throughput on $dev"
  # shellcheck disable=SC2086
  "$PY" benchmarks/train_throughput.py "$OUT/sim/particles.star" --epochs 3 --device $dev | grep -E "s/epoch|peak"
done
if [ -d "$SAMPLE" ]; then
  for amp in "" "--no-amp"; do
    echo "== acceptance run on the sample, CUDA $amp"
    # shellcheck disable=SC2086
    "$PY" benchmarks/sample_training.py --sample "$SAMPLE" -n 40 -- --device cuda $amp 2>&1 | tee "$LOG/sample$amp.log" | tail -12
  done
  echo "== analyze on CUDA (volumes rendered on the GPU), scored against the sample's ground truth"
  "$PY" benchmarks/sample_analysis.py --sample "$SAMPLE" --outdir "$OUT/sample_vae" -n 40 -- --device cuda 2>&1 | tail -4
fi
