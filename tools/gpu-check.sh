#!/usr/bin/env bash
# The prepared GPU check (docs/performance.md, "The GPU check"): what only a GPU can show, in one
# script of at most 10 minutes on one H100, with nothing fetched from the network.
#
#   tools/gpu-check.sh [--dry] [--wheels DIR] [--out FILE]
#
# Steps, in order, each under its own time limit so one slow step cannot eat the others:
#   1. the tests marked `cuda` (compiled bf16 models against eager, the attention kernels);
#   2. golf bench of pr549, v4 (and pr1855 when it exists) at their per-GPU batch, with a
#      profile of one training step (the top kernels by time) for the last one;
#   3. one short real run (a pr549-shaped model for 60 s on the embedded pystdlib corpus) with
#      its eval and the legality probes on CUDA, and their worst deviations.
# Prints one markdown block (also written to --out) for docs/performance.md.
#
# --dry runs the same steps on the CPU at tiny sizes (CI runs it, so the script cannot rot).
# --wheels DIR: a folder of wheels for the pure-Python dependencies the machine lacks; golf
# itself is installed with --no-deps against the machine's own PyTorch.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0 wheels="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) dry=1 ;;
    --wheels) wheels="$2"; shift ;;
    --out) out="$2"; shift ;;
    *) echo "gpu-check: unknown argument $1 (usage: tools/gpu-check.sh [--dry] [--wheels DIR] [--out FILE])" >&2; exit 2 ;;
  esac
  shift
done
python=${PYTHON:-python3}
report=$(mktemp -d)/report.md
work=$(mktemp -d)

note() { printf '%s\n' "$@" >>"$report"; }
step() {  # step TITLE SECONDS COMMAND...: run it under a time limit, its output fenced in the report
  local title=$1 limit=$2; shift 2
  local started=$SECONDS
  note "" "### $title" "" '```'
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$work/step.log" 2>&1
  local rc=$?
  tail -n 60 "$work/step.log" >>"$report"
  note '```' "exit $rc after $((SECONDS - started)) s$([ $rc -eq 124 ] && echo " (stopped at its ${limit} s limit)")"
  echo "gpu-check: $title: exit $rc after $((SECONDS - started)) s" >&2
}

if [ $dry -eq 0 ]; then
  missing=$($python - <<'EOF'
import importlib.util
names = {"pluggy": "pluggy", "typer": "typer", "rich": "rich", "numpy": "numpy", "sentencepiece": "sentencepiece",
         "zstandard": "zstandard", "safetensors": "safetensors", "scipy": "scipy", "huggingface_hub": "huggingface_hub",
         "matplotlib": "matplotlib", "submitit": "submitit", "brotli": "brotli", "python_minifier": "python-minifier"}
print(" ".join(dist for module, dist in names.items() if importlib.util.find_spec(module) is None))
EOF
)
  if [ -n "$missing" ]; then
    [ -n "$wheels" ] || { echo "gpu-check: missing $missing and no --wheels DIR to install them from" >&2; exit 1; }
    $python -m pip install -q --no-index --find-links "$wheels" $missing || exit 1
  fi
  $python -m pip install -q --no-deps --no-build-isolation -e . || exit 1
  sizes=() run_sizes=(--set train.device='"cuda"' --set train.max_wallclock_seconds=60 --set train.iterations=100000
                      --set model.num_layers=11 --set model.model_dim=512 --set model.num_heads=8 --set model.num_kv_heads=4
                      --set train.batch_tokens=98304 --set train.seq_len=2048 --set train.warmup_steps=20
                      --set eval.seq_len=2048 --set train.val_every=0)
  bench_steps=(--steps 10 --warmup 3)
  per_gpu=(--set train.batch_tokens=98304 --set train.micro_batches=1)  # the 8xH100 recipes' 786,432 tokens / 8
else
  export GOLF_GPU_CHECK_DRY=1
  sizes=(--set model.model_dim=64)
  run_sizes=(--set train.iterations=4 --set train.warmup_steps=0 --set train.val_every=0 --set train.log_every=2
             --set train.batch_tokens=1024 --set train.seq_len=64 --set eval.seq_len=64 --set eval.stride=32
             --set data.max_val_tokens=2048)
  bench_steps=(--steps 2 --warmup 0)
  per_gpu=(--set train.batch_tokens=512 --set train.seq_len=64 --set train.micro_batches=1)
fi

note "## GPU check $(date -u +%Y-%m-%d) — $($python -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (dry run on the CPU)")')"
note "" "torch $($python -c 'import torch; print(torch.__version__)'), golf $(git rev-parse --short HEAD 2>/dev/null)$([ $dry -eq 1 ] && echo ', --dry: tiny sizes')"

step "1. tests marked cuda" 180 $python -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider
recipes=(pr549 v4)
[ -f recipes/pr1855.toml ] && [ -f recipes/pr1855-quick.toml ] && recipes+=(pr1855)
for r in "${recipes[@]}"; do
  profile=()
  [ "$r" = "${recipes[-1]}" ] && profile=(--profile)
  recipe=recipes/$r.toml
  [ $dry -eq 1 ] && recipe=recipes/$r-quick.toml  # the same plugins at quickstart scale
  step "2. golf bench $r (per-GPU batch)" 150 golf bench "$recipe" "${bench_steps[@]}" "${per_gpu[@]}" "${sizes[@]}" "${profile[@]}"
done
step "3. a short real run (pr549-shaped, pystdlib) with its legality probes" 200 \
  golf run recipes/pr549-quick.toml --run-dir "$work/run" "${run_sizes[@]}"
note "" "Probes (worst deviation vs tolerance):" '```'
$python - "$work/run" >>"$report" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
runs = [p for p in Path(sys.argv[1]).parent.glob("run*") if (p / "result.json").exists()]
if not runs:
    print("no result.json: the run did not finish")
for name, entry in json.loads((runs[0] / "result.json").read_text())["compliance"].items() if runs else ():
    figures = {k: v for k, v in entry.items() if k in ("status", "worst_deviation", "tolerance")}
    print(f"{name}: {figures}")
EOF
note '```'

cat "$report"
[ -n "$out" ] && cp "$report" "$out"
exit 0
