#!/usr/bin/env bash
# The fit screen of docs/RESULTS.md (issue 37): levers of the RSNN's training, alone and
# combined, each trained 15 epochs on fold 0 of the default dataset (174 training objects,
# 44 for validation) and judged by training and validation accuracy, never the held-out fold.
#
#   tools/fit_screen.sh DATA OUT QUEUE      e.g. tools/fit_screen.sh data runs/screen queue.txt
#
# QUEUE: one run per line, "NAME FLAGS..." (flags after the common ones below; a later flag
# wins). Start it once per core: each process claims the next unclaimed line
# (OUT/claim_NAME), runs it with one thread and goes on until the queue is done; lines added
# to QUEUE meanwhile are taken too. A run stopped half-way continues from its checkpoint
# when its claim is removed and the script started again. OUT/NAME.log has its epochs,
# OUT/done.txt the exit status and wall clock of each run. MODEL=rsnn-realvalued screens the
# real-valued network instead (default rsnn-spiking); COMMON replaces the common flags.
set -uo pipefail
DATA=${1:?usage: tools/fit_screen.sh DATA OUT QUEUE}
OUT=${2:?usage: tools/fit_screen.sh DATA OUT QUEUE}
QUEUE=${3:?usage: tools/fit_screen.sh DATA OUT QUEUE}
QUEUE=$(readlink -f "$QUEUE")
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
mkdir -p "$OUT"
MODEL=${MODEL:-rsnn-spiking}
COMMON=${COMMON-"--epochs 15 --loss log-mean-prob --lr 0.001 --batch-size 32"}   # the earlier recipe
while true; do
  name="" flags=""
  while read -r n f; do
    [ -z "$n" ] || [ "${n:0:1}" = "#" ] && continue
    if mkdir "$OUT/claim_$n" 2>/dev/null; then name=$n flags=$f; break; fi
  done < "$QUEUE"
  [ -z "$name" ] && break
  start=$(date +%s)
  # shellcheck disable=SC2086
  python crossval.py --model "$MODEL" --data-dir "$DATA" --out "$OUT/$name" --fold 0 \
    --threads 1 --no-progress -- $COMMON $flags > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - start )) s" >> "$OUT/done.txt"
done
