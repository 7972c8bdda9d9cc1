#!/usr/bin/env bash
# The whole-network screen (issue 45): candidates scored by validation accuracy pooled over
# the validation fifths of every fold of several datasets, never by the held-out folds.
#
#   tools/screen.sh OUT QUEUE TAG=DATA [TAG=DATA ...]
#       e.g. tools/screen.sh runs/screen queue.txt seed0=data seed1=data_seed1
#
# QUEUE: one candidate per line, "NAME FLAGS..." (training flags after COMMON; a later flag
# wins). Each unit of work is one fold of one candidate on one dataset,
# `crossval.py --fold K --threads 1` into OUT/TAG/NAME, taken fold by fold (every candidate's
# fold 0 on every dataset first), so that candidates stay comparable when the screen stops
# part-way. Start it once per core: each process claims the next unclaimed unit
# (OUT/claims/NAME.TAG.K) and goes on until none is left; lines added to QUEUE meanwhile are
# taken too, and a line commented out (#) is dropped. A unit stopped half-way continues from
# its checkpoint when its claim is removed and the script started again (crossval folds
# resume). OUT/logs/NAME.TAG.K.log has its epochs, OUT/done.txt the exit status and wall clock
# of each unit. FOLDS (default "0 1 2 3 4"), MODEL (default rsnn-spiking) and COMMON (default
# none) change the rest. `python crossval.py screen OUT/*/*` writes the table.
set -uo pipefail
OUT=${1:?usage: tools/screen.sh OUT QUEUE TAG=DATA [TAG=DATA ...]}
QUEUE=${2:?usage: tools/screen.sh OUT QUEUE TAG=DATA [TAG=DATA ...]}
shift 2
[ $# -ge 1 ] || { echo "error: name at least one dataset as TAG=DATA" >&2; exit 2; }
QUEUE=$(readlink -f "$QUEUE")
OUT=$(readlink -m "$OUT")
DATASETS=()
for spec in "$@"; do
  [[ "$spec" == *=* ]] || { echo "error: $spec: give datasets as TAG=DATA" >&2; exit 2; }
  DATASETS+=("${spec%%=*}=$(readlink -m "${spec#*=}")")
done
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
mkdir -p "$OUT/claims" "$OUT/logs"
MODEL=${MODEL:-rsnn-spiking}
COMMON=${COMMON-""}
FOLDS=${FOLDS:-"0 1 2 3 4"}
while true; do
  unit=""
  for fold in $FOLDS; do
    for spec in "${DATASETS[@]}"; do
      tag=${spec%%=*} data=${spec#*=}
      while read -r n f; do
        [ -z "$n" ] || [ "${n:0:1}" = "#" ] && continue
        if mkdir "$OUT/claims/$n.$tag.$fold" 2>/dev/null; then
          unit="$n.$tag.$fold" name=$n flags=$f; break 3
        fi
      done < "$QUEUE"
    done
  done
  [ -z "$unit" ] && break
  start=$(date +%s)
  # shellcheck disable=SC2086
  python crossval.py --model "$MODEL" --data-dir "$data" --out "$OUT/$tag/$name" \
    --fold "$fold" --threads 1 --no-progress -- $COMMON $flags > "$OUT/logs/$unit.log" 2>&1
  echo "$unit rc=$? $(( $(date +%s) - start )) s" >> "$OUT/done.txt"
done
