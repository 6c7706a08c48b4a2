#!/usr/bin/env bash
# One-command GPU check (docs/gpu.md): scripts/gpu_check.sh [--cpu-smoke] [stage ...]
#
# Stages (default: env tests ops train paper; `compare` only when named):
#   env      nvidia-smi, torch/triton/lightning versions                       -> env.log
#   tests    CUDA/Triton operator tests (pytest -k "cuda", DFN_TESTS_K)         -> tests.log
#   ops      python -m dfn.bench ops --device cuda --json                      -> bench_ops.jsonl
#   train    python -m dfn.bench train on the paper's Moving MNIST config: fp32, bf16-mixed, compiled
#            (default mode, fp32) and compiled with CUDA graphs (reduce-overhead, bf16-mixed)
#                                                                              -> train_<variant>.json
#   paper    train.py fit of experiments/moving_mnist/paper_protocol.yaml (data/mnist/ carried; else
#            dfn.yaml on the embedded digits) for the time left, then its test BCE on
#            DFN_PAPER_TEST_SIZE (default 2000) test sequences  -> paper_summary.json, paper_metrics.csv,
#            paper_last.ckpt (final weights), paper_test.gif
#            (DFN_PAPER_ARGS: extra train.py arguments, e.g. "--trainer.precision bf16-mixed")
#   compare  python -m dfn.compare experiments/highway/*.yaml --jobs 8 (the table of docs/highway.md) -> compare/
# Everything goes to $OUT (default ./gpu_out): one log per stage, JSON results, stages.jsonl (rc and
# seconds per stage) and summary.json. Each stage is hard-limited with `timeout`, and the whole run
# by DFN_GPU_CHECK_BUDGET seconds (default 470): a stuck stage cannot eat the device time. A failing
# stage is recorded and the next one runs.
#
# --cpu-smoke (or DFN_GPU_CHECK_SMOKE=1): every stage shrunk to seconds on the CPU (tiny network,
# 2 steps, eager "compile" backend) so the script itself is tested without a GPU.
# Offline machines: wheels in .whl/ (scripts/fetch_wheels.sh) for what is missing are installed into
# /tmp/site first (--no-index --no-deps; torch, numpy, triton are never touched).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SELF=$ROOT/scripts/gpu_check.sh
PY=${PYTHON:-python3}
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }


# run_stage NAME LIMIT_SECONDS CMD... : runs CMD with a hard timeout (capped by the budget left),
# stdout+stderr to $OUT/NAME.log, and one line of JSON to stages.jsonl.
run_stage() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  if [ "$remaining" -lt 10 ]; then
    echo "{\"stage\": \"$name\", \"rc\": null, \"seconds\": 0, \"skipped\": \"budget spent\"}" >> "$OUT/stages.jsonl"
    echo "gpu_check: $name skipped (budget spent)"; return 0
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  local t0; t0=$(date +%s)
  echo "gpu_check: $name (limit ${limit}s, ${remaining}s of budget left)"
  # A stage is this script re-entered (`__run FUNCTION ARGS`): `timeout` can only run a program.
  timeout -k 10 "$limit" bash "$SELF" __run "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $dt, \"timed_out\": $([ $rc = 124 ] || [ $rc = 137 ] && echo true || echo false)}" >> "$OUT/stages.jsonl"
  echo "gpu_check: $name rc=$rc in ${dt}s"; tail -n 3 "$OUT/$name.log" | sed 's/^/    /'
  return 0
}

# --- setup: missing wheels, then check the imports -------------------------------------------------
setup() {
  if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    $PY scripts/gpu_wheels.py .whl /tmp/site || return 1
  fi
  $PY -c "import torch, lightning, jsonargparse, wandb, dfn.cli; print('imports ok: torch', torch.__version__)"
}

env_stage() {
  nvidia-smi || echo "(no nvidia-smi)"
  $PY - <<'EOF'
import json, os, platform, torch, lightning
try:
    import triton; tv = triton.__version__
except Exception as e:  # noqa: BLE001
    tv = f"missing ({e})"
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": tv, "lightning": lightning.__version__, "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(), "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
print(json.dumps(info, indent=1))
json.dump(info, open(os.path.join(os.environ["OUT"], "env.json"), "w"), indent=1)
EOF
}
tests_stage() {
  local files; files=$(ls tests/test_ops*.py 2>/dev/null)
  $PY -m pytest -q -p no:cacheprovider $files -k "${DFN_TESTS_K:-cuda}" -rs
  local rc=$?
  [ $rc = 5 ] && { echo "no CUDA/Triton tests selected"; return 0; }  # pytest: nothing collected
  return $rc
}

ops_stage() {
  if [ "$SMOKE" = 1 ]; then
    $PY -m dfn.bench ops --device cpu --quick --json | tee "$OUT/bench_ops.jsonl"
  else
    $PY -m dfn.bench ops --device cuda --json | tee "$OUT/bench_ops.jsonl"
  fi
}

CONFIG=experiments/moving_mnist/dfn.yaml
SMOKE_MODEL=(--override=--model.encoder_width=4 --override=--model.hidden=8 --override=--model.decoder_width=8
             --override=--model.features=8 --override=--data.init_args.image_size=32
             --override=--data.init_args.batch_size=2)
# name | bench train flags. DFN_TRAIN_VARIANTS (space-separated names) picks a subset.
declare -A VARIANTS=(
  [fp32]="--precision 32-true"
  [bf16]="--precision bf16-mixed"
  [compile_fp32]="--precision 32-true --compile default"
  [cudagraphs_bf16]="--precision bf16-mixed --compile reduce-overhead --warmup 5"
  [channels_last_fp32]="--precision 32-true --channels-last"
  [rollout_fp32]="--precision 32-true --compile default --compile-targets rollout"
)
ORDER=(${DFN_TRAIN_VARIANTS:-fp32 bf16 compile_fp32 cudagraphs_bf16})

train_variant() {
  local name=$1; shift
  if [ "$SMOKE" = 1 ]; then
    local flags=${VARIANTS[$name]/reduce-overhead/default}
    $PY -m dfn.bench train --config $CONFIG --device cpu --steps 2 --warmup 1 --matmul-size 256 \
      --compile-backend eager $flags "${SMOKE_MODEL[@]}" --json > "$OUT/train_$name.json"
  else
    $PY -m dfn.bench train --config $CONFIG --device cuda --steps ${DFN_TRAIN_STEPS:-30} --warmup 3 \
      ${VARIANTS[$name]} --json > "$OUT/train_$name.json"
  fi
  local rc=$?
  cat "$OUT/train_$name.json"
  return $rc
}

paper_stage() {
  # Train for the time left (less DFN_PAPER_RESERVE seconds for start-up and the test), then the CLI
  # tests the best checkpoint by validation loss.
  local reserve=${DFN_PAPER_RESERVE:-75} seconds
  seconds=$(( $(left) - reserve ))
  if [ "$SMOKE" = 1 ]; then seconds=60; fi
  if [ "$seconds" -lt 30 ]; then echo "paper: only ${seconds}s left for training; skipped"; return 3; fi
  local max_time; max_time=$(printf "00:00:%02d:%02d" $((seconds / 60)) $((seconds % 60)))
  local save=/tmp/dfn_paper; rm -rf "$save"
  # The authors' protocol (full MNIST, 10,000 test sequences from the MNIST test digits) needs data/mnist/
  # on this machine: fetch it beforehand (python -m dfn.data.samples fetch mnist) and carry it along.
  local config=${DFN_PAPER_CONFIG:-experiments/moving_mnist/paper_protocol.yaml}
  if [ -z "${DFN_PAPER_CONFIG:-}" ] && [ ! -f data/mnist/train-images-idx3-ubyte ]; then
    echo "paper: data/mnist/ is missing (python -m dfn.data.samples fetch mnist, then carry data/mnist);" \
         "running $CONFIG on the embedded digits instead: not the authors' protocol"
    config=$CONFIG
  fi
  local extra=()
  if [ "$SMOKE" = 1 ]; then
    extra=(--model.encoder_width 4 --model.hidden 8 --model.decoder_width 8 --model.features 8
           --data.init_args.image_size 32 --data.init_args.batch_size 2 --trainer.max_steps 3
           --data.init_args.train_batches_per_epoch 2 --data.init_args.val_size 4)
  fi
  echo "paper: training for at most $max_time (max_time), test on ${DFN_PAPER_TEST_SIZE:-2000} sequences"
  $PY train.py fit --config $config --trainer.accelerator $DEVICE --trainer.devices 1 \
    --trainer.max_time "$max_time" --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir "$save" \
    --data.init_args.val_size ${DFN_PAPER_VAL_SIZE:-512} \
    --data.init_args.test_size $([ "$SMOKE" = 1 ] && echo 8 || echo ${DFN_PAPER_TEST_SIZE:-2000}) \
    --data.init_args.num_workers ${DFN_PAPER_WORKERS:-0} "${extra[@]}" ${DFN_PAPER_ARGS:-}
  local rc=$?
  local summary; summary=$(ls -t "$save"/dfn/*/summary.json 2>/dev/null | head -1)
  if [ -n "$summary" ]; then
    cp "$summary" "$OUT/paper_summary.json"
    cp "$(dirname "$summary")/config.yaml" "$OUT/paper_config.yaml" 2>/dev/null
    cp "$(dirname "$summary")/gifs/test.gif" "$OUT/paper_test.gif" 2>/dev/null
    cp "$(dirname "$summary")/metrics.csv" "$OUT/paper_metrics.csv" 2>/dev/null  # the learning curve's data:
    # python scripts/make_figures.py curve <a folder holding it as metrics.csv>
    cp "$(dirname "$summary")/checkpoints/last.ckpt" "$OUT/paper_last.ckpt" 2>/dev/null  # the final weights
  fi
  return $rc
}

compare_stage() {
  local steps=${DFN_COMPARE_STEPS:-1000} jobs=${DFN_COMPARE_JOBS:-8} extra=()
  if [ "$SMOKE" = 1 ]; then
    steps=2; jobs=2
    extra=(--override=--model.encoder_width=4 --override=--model.hidden=8 --override=--model.decoder_width=8
           --override=--model.features=8 --override=--data.init_args.batch_size=2
           --override=--data.init_args.val_size=4 --override=--data.init_args.test_size=4
           --override=--trainer.max_epochs=1)
    $PY -m dfn.compare experiments/highway/dfn.yaml experiments/highway/dynamicconv.yaml --max-steps $steps \
      --jobs $jobs --accelerator cpu --devices 1 --out "$OUT/compare/compare.md" "${extra[@]}"
  else
    $PY -m dfn.compare experiments/highway/*.yaml --max-steps $steps --jobs $jobs --accelerator cuda \
      --devices 1 --out "$OUT/compare/compare.md" --override=--data.init_args.test_size=${DFN_COMPARE_TEST_SIZE:-1000}
  fi
}

# --- a stage, re-entered under `timeout` -----------------------------------------------------------
if [ "${1:-}" = __run ]; then
  shift
  "$@"
  exit $?
fi

# --- main ---------------------------------------------------------------------------------------------
SMOKE=${DFN_GPU_CHECK_SMOKE:-0}
STAGES=()
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    env|tests|ops|train|paper|compare) STAGES+=("$arg") ;;
    *) echo "gpu_check: unknown stage or option '$arg' (stages: env tests ops train paper compare; --cpu-smoke)" >&2; exit 2 ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env tests ops train paper)
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${DFN_GPU_CHECK_BUDGET:-470}
START=$(date +%s)
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  DEVICE=cuda
fi
export SMOKE OUT BUDGET START DEVICE
export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
: > "$OUT/stages.jsonl"

run_stage setup 90 setup
for stage in "${STAGES[@]}"; do
  case $stage in
    env) run_stage env 60 env_stage ;;
    tests) run_stage tests 150 tests_stage ;;
    ops) run_stage ops 120 ops_stage ;;
    train) for v in "${ORDER[@]}"; do
             if [ -z "${VARIANTS[$v]+x}" ]; then echo "gpu_check: unknown train variant $v"; continue; fi
             run_stage "train_$v" $([ "$SMOKE" = 1 ] && echo 120 || echo 100) train_variant "$v"
           done ;;
    paper) run_stage paper $(( $(left) > 0 ? $(left) : 1 )) paper_stage ;;
    compare) run_stage compare $(( $(left) > 0 ? $(left) : 1 )) compare_stage ;;
  esac
done

$PY scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
echo "gpu_check: done in $(elapsed)s; results in $OUT"
