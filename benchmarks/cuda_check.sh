#!/usr/bin/env bash
# The prepared GPU check (about 8 minutes on one NVIDIA H200): figures of train_vae on CUDA, then the
# method's tests with CUDA present and the acceptance run on the tomoDRGN sample. Sections, in order:
#   grid      images/s of train_vae at box 32/64/96 x batch 1/8/32, AMP on and off
#   lazy      streamed from disk (--lazy) against in memory (--no-lazy), box 64, batch 8
#   ddp       1 rank against 2 ranks sharing GPU 0 (--num-gpus 2, CUDA_VISIBLE_DEVICES=0: gloo)
#   cryodrgn  cryoDRGN-ET side by side (benchmarks/cryodrgn_et.py) when cryodrgn imports, else a skip
#   tests     the method's tests with CUDA present (tests/method/test_cuda.py compares CUDA with the CPU)
#   sample    train_vae on the sample (SAMPLE) to k-means agreement, then analyze on CUDA
# Each command runs under `timeout`, within its cap and within what is left of BUDGET seconds; what no
# longer fits is skipped with a line. A summary table closes the output.
# Run from the repository root (or anywhere: it changes there). Settings, from the environment:
#   PY        interpreter with a CUDA torch (default .venv/bin/python if present, else python3)
#   WORK      scratch folder (default: a new temporary one); LOG: where summary.tsv and sections.log
#             are written at the end (default $OUT when set, as on the device machine, else WORK)
#   BUDGET    seconds for all sections (default 480); SECTIONS: which, in order (default all above)
#   DEVICE    cuda (default) or cpu: cpu runs the same sections on the CPU, small, to test this script
#   BOXES BATCHES STEPS  the grid (default "32 64 96", "1 8 32", 20); LONG_STEPS: steps of the lazy
#             and ddp runs (default 100, one epoch: scale.py's images/s counts the first step); LAZY_BOX
#             (64), CRYO_BOX (64), CRYO_PARTICLES (256)
#   SAMPLE    the sample folder (default ../shared/data/tomodrgn-sample-10076; skipped when absent) and
#             SAMPLE_EPOCHS (40)
#   CRYODRGN  a cryodrgn program, or CRYODRGN_PY an interpreter in which cryodrgn imports (default:
#             PY when cryodrgn imports there, else `cryodrgn` on PATH, else the section is skipped)
#   DRY=1     print the commands instead of running them
# Wheels in .whl/ (benchmarks/device_wheels.sh, for a machine without internet) are installed first
# into SITE (default /tmp/site) with pip --no-index --no-deps --target, and put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WORK=${WORK:-$(mktemp -d)}
LOG=${LOG:-${OUT:-$WORK}}
BUDGET=${BUDGET:-480}
SECTIONS=${SECTIONS:-grid lazy ddp cryodrgn tests sample}
DEVICE=${DEVICE:-cuda}
BOXES=${BOXES:-32 64 96}
BATCHES=${BATCHES:-1 8 32}
STEPS=${STEPS:-20}
LONG_STEPS=${LONG_STEPS:-100}
LAZY_BOX=${LAZY_BOX:-64}
CRYO_BOX=${CRYO_BOX:-64}
CRYO_PARTICLES=${CRYO_PARTICLES:-256}
SAMPLE=${SAMPLE:-../shared/data/tomodrgn-sample-10076}
SAMPLE_EPOCHS=${SAMPLE_EPOCHS:-40}
DRY=${DRY:-0}
LOGS=$WORK/logs
mkdir -p "$LOGS" "$LOG"
SUMMARY=$WORK/summary.tsv
printf 'section\tstatus\tseconds\tfigures\n' > "$SUMMARY"
START=$(date +%s)
declare -A FIG=()

if [ "${WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
  SITE=${SITE:-/tmp/site}
  if [ "$DRY" = 1 ]; then
    echo "+ $PY -m pip install --no-index --no-deps --target $SITE .whl/*.whl"
  elif "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      > "$LOGS/wheels.log" 2>&1; then
    echo "== wheels from .whl/ installed into $SITE"
  else
    echo "== wheels from .whl/ did not install with $PY (see $LOGS/wheels.log); going on without them"
    SITE=""
  fi
  [ -n "$SITE" ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# the benchmarks import the package from this tree, installed or not
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
if [ "$DRY" != 1 ]; then
  "$PY" -c "import os, torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '|', os.cpu_count(), 'CPU cores')" || exit 1
  if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'" || exit 1
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
fi

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run NAME CAP CMD...: CMD under timeout (CAP, or the budget left), its output in $LOGS/NAME.log;
# sets STATUS (ok, fail(N), timeout, skip) and SECS; true when it succeeded
run() {
  local name=$1 cap=$2 rest t0 rc
  shift 2
  rest=$(left)
  [ "$rest" -lt "$cap" ] && cap=$rest
  SECS=0
  if [ "$cap" -lt 10 ]; then
    STATUS=skip
    echo "-- $name: skipped: the budget of $BUDGET s is spent"
    : > "$LOGS/$name.log"
    return 1
  fi
  if [ "$DRY" = 1 ]; then
    echo "+ [$name, at most $cap s] $*"
    : > "$LOGS/$name.log"
    STATUS=dry
    return 0
  fi
  t0=$(date +%s)
  timeout -k 10 "$cap" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  SECS=$(( $(date +%s) - t0 ))
  case $rc in
    0) STATUS=ok ;;
    124|137) STATUS=timeout; echo "-- $name: stopped after $cap s" ;;
    *) STATUS="fail($rc)"; echo "-- $name: failed ($rc), last lines:"; tail -5 "$LOGS/$name.log" ;;
  esac
  [ "$rc" -eq 0 ]
}

# record NAME FIGURES: a row of the summary (STATUS and SECS of the last run)
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$STATUS" "$SECS" "$2" >> "$SUMMARY"; }

# first capture of an extended regex (no '#' in it) in a log, or n/a
grab() { local v; v=$(sed -nE "s#.*$2.*#\\1#p" "$1" | head -1); echo "${v:-n/a}"; }

# scale NAME CAP [scale.py flags]: one run of benchmarks/scale.py; its figures in FIGURES and FIG[NAME]
scale() {
  local name=$1 cap=$2 log
  shift 2
  log=$LOGS/$name.log
  run "$name" "$cap" "$PY" benchmarks/scale.py --device "$DEVICE" "$@"
  FIG[$name]=$(grab "$log" 'images/s: ([0-9]+) images/s')
  FIGURES="${FIG[$name]} images/s, $(grab "$log" '\(decoder ([0-9.]+) TFLOP/s\)') TFLOP/s"
  FIGURES+=", first step $(grab "$log" 'time to first step: ([0-9.]+) s') s"
  FIGURES+=", device $(grab "$log" 'peak device memory: ([0-9]+) MiB') MiB"
  FIGURES+=", host $(grab "$log" 'peak host RSS: ([0-9]+) MiB') MiB (anonymous $(grab "$log" 'anonymous RSS[^:]*: ([0-9]+) MiB') MiB)"
  [ "$STATUS" = ok ] || [ "$STATUS" = dry ] || FIGURES="see $log"
  record "$name" "$FIGURES"
}

have_scale() {
  [ -f benchmarks/scale.py ] && "$PY" benchmarks/scale.py --help 2>/dev/null | grep -q -- "$1"
}

# make_set NAME DIR PARTICLES BOX: scale.py's set (50 particles simulated once per box, then copied) of
# PARTICLES particles x 41 tilts, made when absent; its star in STAR
make_set() {
  local name=$1
  shift
  run "$name" 120 "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); from scale import make_set
print('STAR', make_set(Path(sys.argv[1]), int(sys.argv[2]), 41, int(sys.argv[3]), 50))" "$@"
  STAR=$(sed -n 's/^STAR //p' "$LOGS/$name.log")
  [ "$DRY" = 1 ] && STAR=$1/scale_${2}x41_box$3.star
  [ -n "$STAR" ]
}

# Each grid run trains two epochs of STEPS steps (batch x STEPS particles) with
# benchmarks/train_throughput.py: the second epoch is the steady rate, the first includes the warm-up
# (CUDA kernels chosen and compiled, allocator growth).
section_grid() {
  echo "== grid: images/s at box {$BOXES} x batch {$BATCHES}, AMP on and off, 2 epochs of $STEPS steps each"
  if [ ! -f benchmarks/scale.py ]; then STATUS=skip SECS=0 record grid "benchmarks/scale.py (its make_set) not here"; return; fi
  local box b amp name log n
  for box in $BOXES; do
    for b in $BATCHES; do
      n=$(( b * STEPS ))
      if ! make_set "set_box${box}_n$n" "$WORK/set_box$box" "$n" "$box"; then
        record "set_box${box}_n$n" "no set made: see $LOGS/set_box${box}_n$n.log"
        continue
      fi
      for amp in on off; do
        name=grid_box${box}_b${b}_amp$amp
        log=$LOGS/$name.log
        # shellcheck disable=SC2046
        run "$name" 90 "$PY" benchmarks/train_throughput.py "$STAR" --epochs 2 -b "$b" --device "$DEVICE" \
          $([ $amp = off ] && echo --no-amp)
        FIG[$name]=$(grab "$log" 's/epoch = ([0-9]+) images/s')
        FIGURES="${FIG[$name]} images/s (first epoch $(grab "$log" 'first epoch ([0-9.]+) s') s"
        FIGURES+=", then $(grab "$log" 'then ([0-9.]+) s/epoch') s)"
        FIGURES+=", GPU $(grab "$log" 'peak GPU memory ([0-9]+) MiB') MiB, host $(grab "$log" 'peak host memory ([0-9]+) MiB') MiB"
        [ "$STATUS" = ok ] || [ "$STATUS" = dry ] || FIGURES="see $log"
        record "$name" "$FIGURES"
        echo "   box $box, batch $b, AMP $amp: $FIGURES"
      done
    done
  done
}

section_lazy() {
  echo "== lazy: streamed against in memory, box $LAZY_BOX, batch 8"
  if ! have_scale --no-lazy; then STATUS=skip SECS=0 record lazy "benchmarks/scale.py (with --lazy/--no-lazy) not here"; return; fi
  local mode
  for mode in lazy no-lazy; do
    scale "lazy_$mode" 90 --particles $(( 8 * LONG_STEPS )) --tilts 41 --box "$LAZY_BOX" --steps "$LONG_STEPS" -b 8 --base 50 \
      --data "$WORK/set_box$LAZY_BOX" "--$mode"
    echo "   --$mode: $FIGURES"
  done
}

section_ddp() {
  echo "== ddp: 1 rank against 2 ranks on the same GPU, box 32, batch 8"
  if ! have_scale --num-gpus || ! "$PY" -m tomodrgn_scipion.method.cli train_vae --help 2>/dev/null | grep -q -- --num-gpus; then
    STATUS=skip SECS=0 record ddp "train_vae or scale.py has no --num-gpus"; return
  fi
  local n
  for n in 1 2; do
    CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES_DDP:-0} scale "ddp_${n}rank" 120 --particles $(( 8 * LONG_STEPS )) \
      --tilts 41 --box 32 --steps "$LONG_STEPS" -b 8 --base 50 --data "$WORK/set_box32" --num-gpus "$n"
    echo "   $n rank(s): $FIGURES"
  done
  if [ "${FIG[ddp_1rank]:-n/a}" != n/a ] && [ "${FIG[ddp_2rank]:-n/a}" != n/a ]; then
    echo "   2 ranks / 1 rank: $(awk -v a="${FIG[ddp_2rank]}" -v b="${FIG[ddp_1rank]}" 'BEGIN { printf "%.2f", a / b }')"
  fi
}

section_cryodrgn() {
  echo "== cryodrgn: cryoDRGN-ET side by side, box $CRYO_BOX, batch 8"
  local how=() star
  if [ -n "${CRYODRGN:-}" ]; then
    how=(--cryodrgn "$CRYODRGN")
  elif [ -n "${CRYODRGN_PY:-}" ]; then
    how=(--cryodrgn-python "$CRYODRGN_PY")
  elif "$PY" -c "import cryodrgn.commands.train_vae" > /dev/null 2>&1; then
    how=(--cryodrgn-python "$PY")
  elif command -v cryodrgn > /dev/null; then
    how=(--cryodrgn "$(command -v cryodrgn)")
  else
    STATUS=skip SECS=0 record cryodrgn "cryodrgn does not import in $PY and no cryodrgn on PATH (benchmarks/device_wheels.sh)"
    echo "   skipped: cryodrgn does not import in $PY and is not on PATH"
    return
  fi
  # scale.py's set (the grid's simulation reused) when it can be made, else cryodrgn_et.py simulates one
  star=""
  [ -f benchmarks/scale.py ] && make_set set_cryodrgn "$WORK/set_box$CRYO_BOX" "$CRYO_PARTICLES" "$CRYO_BOX" && star=$STAR
  run cryodrgn 150 "$PY" benchmarks/cryodrgn_et.py ${star:+"$star"} --particles "$CRYO_PARTICLES" --box "$CRYO_BOX" \
    -b 8 --epochs 3 --device "$DEVICE" --outdir "$WORK/cryodrgn" "${how[@]}"
  FIGURES=$(grep -E '^images/s:' "$LOGS/cryodrgn.log" | head -1)
  grep -qE '^cryoDRGN-ET: skipped' "$LOGS/cryodrgn.log" && STATUS=skip FIGURES=$(grep -E '^cryoDRGN-ET: skipped' "$LOGS/cryodrgn.log")
  record cryodrgn "${FIGURES:-see $LOGS/cryodrgn.log}"
  grep -vE '^  ' "$LOGS/cryodrgn.log" | sed 's/^/   /'
}

section_tests() {
  echo "== tests: the method's tests with CUDA present"
  if [ "$DEVICE" = cpu ]; then STATUS=skip SECS=0 record tests "DEVICE=cpu: the CPU suite is CI's"; echo "   skipped (DEVICE=cpu)"; return; fi
  local xdist=()
  if [ "${XDIST:-4}" != 0 ] && "$PY" -c "import xdist" > /dev/null 2>&1; then xdist=(-n "${XDIST:-4}"); fi
  TOMODRGN_SAMPLE_DIR=$SAMPLE run tests 150 "$PY" -m pytest tomodrgn_scipion/tests/method -q -p no:cacheprovider -x \
    "${xdist[@]}" --deselect tomodrgn_scipion/tests/method/test_training.py::test_vae_learns_the_two_states
  record tests "$(grep -E '(passed|failed|error)' "$LOGS/tests.log" | tail -1)"
  tail -3 "$LOGS/tests.log" | sed 's/^/   /'
}

section_sample() {
  echo "== sample: train_vae on the tomoDRGN sample ($SAMPLE_EPOCHS epochs) to k-means agreement, then analyze"
  if [ ! -d "$SAMPLE" ]; then STATUS=skip SECS=0 record sample "no sample at $SAMPLE"; echo "   skipped: no $SAMPLE"; return; fi
  local dev=cuda
  [ "$DEVICE" = cpu ] && dev=cpu
  run sample 120 "$PY" benchmarks/sample_training.py --sample "$SAMPLE" -n "$SAMPLE_EPOCHS" --outdir "$WORK/sample_vae" -- --device $dev
  record sample "$(grep -E '^final:' "$LOGS/sample.log"); $(grep -E '^seconds per epoch' "$LOGS/sample.log")"
  grep -E '^(seconds|final|volume)' "$LOGS/sample.log" | sed 's/^/   /'
  # reuses the run just trained when it finished
  run analyze 90 "$PY" benchmarks/sample_analysis.py --sample "$SAMPLE" --outdir "$WORK/sample_vae" -n "$SAMPLE_EPOCHS" -- --device $dev
  record analyze "$(grep -E '^k-means' "$LOGS/analyze.log")"
  tail -4 "$LOGS/analyze.log" | sed 's/^/   /'
}

for s in $SECTIONS; do
  if declare -F "section_$s" > /dev/null; then
    "section_$s"
  else
    echo "== $s: no such section (grid lazy ddp cryodrgn tests sample)"
  fi
done

echo "== summary ($(( $(date +%s) - START )) s of $BUDGET s)"
if [ -n "${FIG[*]}" ] && [[ " $SECTIONS " == *" grid "* ]]; then
  printf '%-8s %-6s %14s %14s\n' box batch "AMP on img/s" "AMP off img/s"
  for box in $BOXES; do
    for b in $BATCHES; do
      printf '%-8s %-6s %14s %14s\n' "$box" "$b" "${FIG[grid_box${box}_b${b}_ampon]:-n/a}" "${FIG[grid_box${box}_b${b}_ampoff]:-n/a}"
    done
  done
fi
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
if [ "$LOG" != "$WORK" ]; then
  cp "$SUMMARY" "$LOG/summary.tsv"
  for f in "$LOGS"/*.log; do echo "===== $(basename "$f")"; cat "$f"; done > "$LOG/sections.log"
fi
echo "logs: $LOGS$([ "$LOG" != "$WORK" ] && echo " (summary.tsv and sections.log in $LOG)")"
! grep -qE $'\t(fail|timeout)' "$SUMMARY"
