#!/usr/bin/env bash
# Fine-tune the MiniLM teachers for MRPC, RTE and SST-2, one after the other, nice'd.
# Each run writes runs/teacher-<task>/ (the best model + metrics.json), runs/teacher-<task>.log and
# runs/teacher-<task>.wall (the command and its wall time). Then: python bench/teachers_report.py
#   GLUE_DIR=../shared/data/glue nohup bench/teachers.sh > runs/teachers.log 2>&1 &
# Pass task names to run only some: bench/teachers.sh rte
set -euo pipefail
# the GLUE data comes from GLUE_DIR only (made absolute here, before the cd below)
if [ -z "${GLUE_DIR:-}" ] || [ ! -d "$GLUE_DIR" ]; then
  echo "bench/teachers.sh: error: set GLUE_DIR to the glue_data folder (e.g. ../shared/data/glue); got '${GLUE_DIR:-}'" >&2
  exit 2
fi
export GLUE_DIR="$(cd "$GLUE_DIR" && pwd)"
cd "$(dirname "$0")/.."
PRUNEKIT="${PRUNEKIT:-.venv/bin/prunekit}"
# torch threads: 1 keeps a nice'd run from stalling at thread barriers on a busy 2-core machine
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p runs

declare -A ARGS=(
  [mrpc]="--epochs 3 --eval-every 1000000"
  [rte]="--epochs 5 --eval-every 1000000"
  [sst2]="--epochs 1 --eval-every 1000000"
)
for task in "${@:-mrpc rte sst2}"; do
  for t in $task; do
    cmd="prunekit finetune --model minilm --task $t --output runs/teacher-$t ${ARGS[$t]} --overwrite"
    echo "== $cmd"
    start=$(date +%s.%N)
    nice -n 10 $PRUNEKIT ${cmd#prunekit } > "runs/teacher-$t.log" 2>&1
    end=$(date +%s.%N)
    printf '{"command": "OMP_NUM_THREADS=%s %s", "wall_seconds": %.1f, "machine": "%s, %s cores, load %s at the end"}\n' \
      "$OMP_NUM_THREADS" "$cmd" "$(echo "$end - $start" | bc)" "$(uname -m)" "$(getconf _NPROCESSORS_ONLN)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
      > "runs/teacher-$t.wall"
    cat "runs/teacher-$t.wall"
  done
done
