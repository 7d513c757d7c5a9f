#!/usr/bin/env bash
# The study's Table 1 (YOLOv3, YOLOv5s, PP-YOLOv2; five patient-grouped folds) on one leased GPU.
#
# A GPU lease often gives one command of at most 10 minutes on a machine that has PyTorch but
# neither this project's data nor its other dependencies, and copies at most 64 MiB of the
# checkout to it. So the run is prepared here and sent in two parts:
#
#   bench/table1_gpu.sh prepare DATA   # here: .table1/ with the data set in two tar files
#                                      # (each fits beside the checkout), their checksums and
#                                      # the wheels the GPU machine lacks (pydicom, pycocotools)
#   bench/table1_gpu.sh stash          # on the GPU machine, with .table1/data-a.tar: unpacks
#                                      # the first part to /tmp/lumbardx-table1/data
#   bench/table1_gpu.sh run [BUDGET_S] # on the GPU machine, with .table1/data-b.tar and
#                                      # .table1/wheels: unpacks the rest, checks every file
#                                      # against the checksums, installs the wheels under /tmp,
#                                      # runs bench/table1_gpu.py (BUDGET_S seconds of training
#                                      # for the three models, default 400: about 8.5 minutes
#                                      # in all), writing the results to $OUT (or ./table1-out)
#                                      # after every step
#   bench/table1_gpu.sh check          # unpack part B and check (what run does first)
#   bench/table1_gpu.sh dry-run DATA   # here: the same steps at tiny scale on the CPU
#   (a rehearsal of `run` here: TABLE1_DEVICE=cpu TABLE1_NO_WHEELS=1
#    TABLE1_EXTRA="--dry-run --models yolov5s" bench/table1_gpu.sh run)
#
# Results: table1_gpu.{json,md} (device, versions, calibration, plan, epochs, wall time),
# table1.{md,json,csv} (per class, 95% intervals, paired differences, the shipped model's row)
# and table1_gpu.log. Copy them to bench/results/ and the three rows to the README's Table 1.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PREP="${TABLE1_PREP:-$ROOT/.table1}"
WORK="${TABLE1_WORK:-/tmp/lumbardx-table1}"
# the first part's size: leaves room for the checkout (about 20 MB) in 64 MiB
PART_A_BYTES="${TABLE1_PART_A_BYTES:-38000000}"
PY_TAG=312    # the GPU machine's Python (3.12)

prepare() {
  local data="${1:?usage: table1_gpu.sh prepare DATA}"
  rm -rf "$PREP" && mkdir -p "$PREP/wheels"
  # part A: images/ files up to PART_A_BYTES; part B: every other file of DATA (labels,
  # data.yaml, patients.csv...) and SHA256SUMS of them all (names may hold spaces: Python)
  python3 - "$data" "$PREP" "$PART_A_BYTES" <<'PY'
import hashlib, io, sys, tarfile
from pathlib import Path
data, prep, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
sums = "".join(f"{hashlib.sha256((data / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
size, part_a = 0, []
for f in files:
    if f.startswith("images/") and size + (data / f).stat().st_size <= limit:
        size += (data / f).stat().st_size
        part_a.append(f)
with tarfile.open(prep / "data-a.tar", "w") as tar:
    for f in part_a:
        tar.add(data / f, arcname=f)
with tarfile.open(prep / "data-b.tar", "w") as tar:
    for f in files:
        if f not in set(part_a):
            tar.add(data / f, arcname=f)
    info = tarfile.TarInfo("SHA256SUMS")
    info.size = len(sums.encode())
    tar.addfile(info, io.BytesIO(sums.encode()))
print(f"  {len(files)} files: {len(part_a)} in data-a.tar, {len(files) - len(part_a)} in data-b.tar")
PY
  [ -n "${TABLE1_NO_WHEELS:-}" ] || python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_TAG" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$PREP/wheels" pydicom==3.0.2 pycocotools==2.0.11
  du -sh "$PREP"/* | sed 's/^/  /'
  echo "prepared $PREP; GPU calls: 1) stash, carrying .table1/data-a.tar;" \
       "2) run, carrying .table1/data-b.tar and .table1/wheels"
}

stash() {
  mkdir -p "$WORK/data"
  tar -xf "$PREP/data-a.tar" -C "$WORK/data"
  echo "stashed $(find "$WORK/data" -type f | wc -l) files in $WORK/data"
}

unpack_and_check() {
  [ -d "$WORK/data/images" ] || { echo "part A is not on this machine: run 'stash' first" >&2; exit 2; }
  tar -xf "$PREP/data-b.tar" -C "$WORK/data"
  (cd "$WORK/data" && sha256sum --quiet -c SHA256SUMS) || { echo "data check failed" >&2; exit 2; }
  echo "data complete: $(find "$WORK/data/images" -type f | wc -l) images, checksums match"
}

run() {
  local budget="${1:-400}" out="${OUT:-$ROOT/table1-out}"
  unpack_and_check
  [ -n "${TABLE1_NO_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --target "$WORK/site" "$PREP"/wheels/*.whl
  export PYTHONPATH="$WORK/site:$ROOT/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  mkdir -p "$out"
  set +e
  # results go straight to $out after every step, so a run stopped at the lease's limit still
  # leaves what it finished (checkpoints stay in $WORK/out)
  python3 "$HERE/table1_gpu.py" "$WORK/data" --out "$WORK/out" --results "$out" \
    --device "${TABLE1_DEVICE:-cuda}" --budget-s "$budget" ${TABLE1_EXTRA:-} 2>&1 \
    | tee "$out/table1_gpu.log"
  local rc=${PIPESTATUS[0]}
  set -e
  exit "$rc"
}

dry_run() {
  local data="${1:?usage: table1_gpu.sh dry-run DATA}" out="${OUT:-/tmp/lumbardx-table1-dry}"
  rm -rf "$out" && mkdir -p "$out"
  PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 python3 "$HERE/table1_gpu.py" "$data" --out "$out" \
    --dry-run 2>&1 | tee "$out/table1_gpu.log"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  stash) stash ;;
  check) unpack_and_check ;;
  run) shift; run "$@" ;;
  dry-run) shift; dry_run "$@" ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
