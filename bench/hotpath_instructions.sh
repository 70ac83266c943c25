#!/usr/bin/env bash
# Instructions per transaction of the relay (bench/pg_hotpath.py) under callgrind: repeatable on a
# loaded machine, unlike wall-clock time. The bench calls os.getppid() around its timed loop;
# callgrind dumps its counters there, so only the second run's loop is counted (no start-up,
# imports or first-use work).
# usage: bench/hotpath_instructions.sh [simple|extended] [off|write] [rounds] [keep-dir]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
protocol=${1:-simple}; recording=${2:-write}; rounds=${3:-2000}
PY=${PYTHON:-.venv/bin/python}
out=${4:-$(mktemp -d)}
mkdir -p "$out"
valgrind --tool=callgrind --dump-before=getppid --callgrind-out-file="$out/cg" "$PY" bench/pg_hotpath.py \
  --protocol "$protocol" --recording "$recording" --rounds "$rounds" --repeat 2 >/dev/null 2>"$out/log"
loop=$(ls "$out"/cg.* | sort -t. -k2 -n | sed -n 4p)   # dumps: start, loop 1, between, loop 2, rest
total=$(sed -n 's/^summary: //p; s/^totals: //p' "$loop" | head -1)
echo "$protocol $recording: $((total / rounds)) instructions/transaction ($loop)"
