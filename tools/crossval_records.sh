#!/usr/bin/env bash
# The records of the cross-validation study (tools/crossval_study.sh): for every finished
# fold its result.json (and an RSNN fold's metrics.csv), with each cross-validation's
# crossval.json and folds.json, kept in docs/cv so that the study outlives the machine it
# ran on (docs/RESULTS.md is drawn from them; `python crossval.py summarize docs/cv/91/cnn
# ...` works on them as on the run folders).
#
#   tools/crossval_records.sh save OUT [RECORDS]   copy OUT's finished folds into RECORDS
#   tools/crossval_records.sh load OUT [RECORDS]   seed OUT from RECORDS (the study does this
#                                                  first, so that recorded folds are skipped)
#
# OUT, OUT182, OUT364 map to RECORDS/91, RECORDS/182, RECORDS/364 (RECORDS: docs/cv).
# Nothing is overwritten: a fold already in the destination, or a cross-validation whose
# crossval.json differs there, is left as it is (and said).
set -euo pipefail
MODE=${1:?usage: tools/crossval_records.sh save|load OUT [RECORDS]}
OUT=${2:?usage: tools/crossval_records.sh save|load OUT [RECORDS]}
RECORDS=${3:-$(cd "$(dirname "$0")/.." && pwd)/docs/cv}
case $MODE in save|load) ;; *) echo "unknown mode '$MODE': save or load" >&2; exit 2 ;; esac

settings() {  # a crossval.json without its data_dir (the same study on another machine)
  python -c 'import json, sys; s = json.load(open(sys.argv[1])); s.pop("data_dir", None)
print(json.dumps(s, sort_keys=True))' "$1"
}

copy_cv() {   # src dst: one model's cross-validation, finished folds only
  local src=$1 dst=$2 f K
  [ -f "$src/crossval.json" ] && [ -f "$src/folds.json" ] || return 0
  compgen -G "$src/fold_*/result.json" > /dev/null || return 0   # no finished fold yet
  if [ -f "$dst/crossval.json" ] && ! cmp -s <(settings "$src/crossval.json") \
                                             <(settings "$dst/crossval.json"); then
    echo "skipped $src: $dst holds a cross-validation with other settings" >&2
    return 0
  fi
  mkdir -p "$dst"
  for f in crossval.json folds.json; do [ -f "$dst/$f" ] || cp "$src/$f" "$dst/$f"; done
  for f in "$src"/fold_*/result.json; do
    [ -f "$f" ] || continue
    K=$(basename "$(dirname "$f")")
    [ -f "$dst/$K/result.json" ] && continue
    if [ -f "$dst/$K/checkpoint.pth" ]; then
      echo "skipped $src/$K: $dst/$K holds a run of its own (delete it to take the record)" >&2
      continue
    fi
    mkdir -p "$dst/$K"
    # metrics.csv first: a fold dir is done once its result.json is there
    if [ -f "$src/$K/metrics.csv" ]; then cp "$src/$K/metrics.csv" "$dst/$K/metrics.csv.$$" \
      && mv "$dst/$K/metrics.csv.$$" "$dst/$K/metrics.csv"; fi
    cp "$f" "$dst/$K/result.json.$$" && mv "$dst/$K/result.json.$$" "$dst/$K/result.json"
    echo "$MODE: $src/$K -> $dst/$K"
  done
}

for n in 91 182 364; do
  run=$OUT; [ "$n" = 91 ] || run=$OUT$n
  if [ "$MODE" = save ]; then
    for d in "$run"/*/; do
      if [ -d "$d" ]; then copy_cv "${d%/}" "$RECORDS/$n/$(basename "$d")"; fi
    done
  else
    for d in "$RECORDS/$n"/*/; do
      if [ -d "$d" ]; then copy_cv "${d%/}" "$run/$(basename "$d")"; fi
    done
  fi
done
