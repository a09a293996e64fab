#!/usr/bin/env bash
# The device check, one prepared script (about 5-6 minutes on one H100/H200, no internet):
#   1. installs the wheels it needs from $WHEELS (default .whl/) with pip --no-index --no-deps --target (easydict;
#      pytest, pluggy, iniconfig, packaging for the GPU tests; onnxruntime-gpu and its small dependencies when there);
#   2. patches a copy of the shared upstream snapshot ($INSIGHTFACE_PWR_SHARED, default ../shared);
#   3. trains with `torchrun --nproc_per_node=1 train.py <recipe>` for 100 steps per head family: upstream's r18
#      student with fp16, a random upstream r50 teacher (fp16), synthetic data through data_backend="insightface_pwr"
#      (benchmarks/gpu/prepare.py writes the recipes and the teacher);
#   4. runs `pytest tests/gpu`;
#   5. times PWR fwd+bwd at N = 1024 and 4096 and a student-only / cached-teacher / live fp16 r50 teacher step
#      (benchmarks/gpu/timing.py);
#   6. writes gpu_check.md (into $OUT when set, else benchmarks/out/); exits 1 when a run or a GPU test failed.
#
#   benchmarks/gpu_check.sh [--cpu-dry-run] [--families pwr,hkd] [--keep]
# --cpu-dry-run: the same steps on CPU (gloo, fp32, 2 steps of batch 6, tiny timings; train.py under the CPU
# stand-ins of benchmarks/gpu/launch_train.py). --keep: keep the work folder (printed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
FAMILIES=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --families) FAMILIES="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

SHARED="${INSIGHTFACE_PWR_SHARED:-$REPO/../shared}"
WHEELS="${WHEELS:-$REPO/.whl}"
OUTDIR="${OUT:-$REPO/benchmarks/out}"
PY="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
[ "$KEEP" = 1 ] && echo "work folder: $WORK" || trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*"; }

# 1. wheels (never the network; never numpy or torch: the machine's own stay in charge)
DEPS="$WORK/deps"
mkdir -p "$DEPS"
install_wheel() {  # name [required]
  local files
  files=$(ls "$WHEELS"/"$1"-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$files" ]; then
    "$PY" -m pip install -q --no-index --no-deps --target "$DEPS" "$files" && return 0
  fi
  if [ "${2:-}" = required ]; then echo "gpu_check.sh: no wheel for $1 in $WHEELS" >&2; exit 3; fi
  return 0
}
"$PY" -c "import easydict" 2>/dev/null || install_wheel easydict required
"$PY" -c "import pytest" 2>/dev/null || for w in pytest pluggy iniconfig packaging; do install_wheel "$w"; done
if [ "$DRY" = 0 ] && ! "$PY" -c "import onnxruntime" 2>/dev/null; then
  for w in onnxruntime_gpu flatbuffers protobuf coloredlogs humanfriendly sympy mpmath; do install_wheel "$w"; done
fi
export PYTHONPATH="$DEPS:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export INSIGHTFACE_PWR_SHARED="$SHARED"
say "python $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.cuda.is_available())')"

# 2. the patched copy of upstream
TREE="$WORK/arcface_torch"
cp -r "$SHARED/upstream/arcface_torch" "$TREE"
chmod -R u+w "$TREE"
"$PY" -m insightface_pwr patch "$TREE" > "$WORK/patch.txt"
say "patched $TREE"

# 3. 100 steps per head family (dry run: 2)
PREP=(--tree "$TREE" --work "$WORK")
[ "$DRY" = 1 ] && PREP+=(--cpu-dry-run)
[ -n "$FAMILIES" ] && PREP+=(--families "$FAMILIES")
mapfile -t FAMS < <("$PY" "$REPO/benchmarks/gpu/prepare.py" "${PREP[@]}")
if [ "$DRY" = 1 ]; then
  STEPS=2; RUN_TIMEOUT=600; ENTRY=("$REPO/benchmarks/gpu/launch_train.py" --cpu)
elif "$PY" -c "import torch.utils.tensorboard" 2>/dev/null; then
  STEPS=100; RUN_TIMEOUT=150; ENTRY=(train.py)
else
  STEPS=100; RUN_TIMEOUT=150; ENTRY=("$REPO/benchmarks/gpu/launch_train.py")  # + a SummaryWriter stand-in
fi
: > "$WORK/runs.tsv"
for fam in "${FAMS[@]}"; do
  start=$(date +%s)
  rc=0
  (cd "$TREE" && timeout "$RUN_TIMEOUT" "$PY" -m torch.distributed.run --nproc_per_node=1 \
      "${ENTRY[@]}" "$WORK/recipes/$fam.py") > "$WORK/train_$fam.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\n' "$fam" "$rc" "$(( $(date +%s) - start ))" >> "$WORK/runs.tsv"
  say "train $fam: exit $rc"
  [ "$rc" = 0 ] || tail -20 "$WORK/train_$fam.log"
done

# 4. the GPU tests (they skip without CUDA)
if "$PY" -c "import pytest" 2>/dev/null; then
  (cd "$REPO" && timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/gpu -rs) > "$WORK/pytest.txt" 2>&1 || true
  say "pytest tests/gpu: $(tail -1 "$WORK/pytest.txt")"
fi

# 5. timings
TIMING=(--tree "$TREE" --teacher "$WORK/teacher/model.pt" --out "$WORK/timing.md")
[ "$DRY" = 1 ] && TIMING+=(--cpu-dry-run)
timeout 300 "$PY" -W ignore "$REPO/benchmarks/gpu/timing.py" "${TIMING[@]}" > "$WORK/timing.txt" 2>&1 \
  || { echo "timing failed:"; tail -20 "$WORK/timing.txt"; }
say "timings done"

# 6. the report
mkdir -p "$OUTDIR"
TITLE="gpu_check$([ "$DRY" = 1 ] && echo ' --cpu-dry-run')"
rc=0
"$PY" "$REPO/benchmarks/gpu/summarize.py" --work "$WORK" --out "$OUTDIR/gpu_check.md" --steps "$STEPS" \
  --title "$TITLE" || rc=$?
cp "$WORK"/train_*.log "$WORK/pytest.txt" "$OUTDIR/" 2>/dev/null || true
say "report: $OUTDIR/gpu_check.md (exit $rc)"
exit "$rc"
