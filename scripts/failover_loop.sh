#!/usr/bin/env bash
# Runs the failover tests (a worker SIGKILLed, a worker frozen and thawed; each with a busy loop on one core) RUNS
# times in a row on the local stack and prints the tally. Issue #22 asks for 20 passes in a row.
#   scripts/failover_loop.sh [RUNS]        (make failover-loop RUNS=20)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-20}
deploy/local/stack.sh up >/dev/null || { echo "error: the local stack did not come up" >&2; exit 1; }
eval "$(deploy/local/stack.sh env)"
mkdir -p .cache/failover-loop
passed=0
failed=0
for run in $(seq 1 "$runs"); do
  log=.cache/failover-loop/run-$run.log
  started=$(date +%s)
  tmp=.cache/failover-loop/run-$run-tmp  # the workers' logs of a failed run are kept here
  rm -rf "$tmp"
  if .venv/bin/pytest -p no:cacheprovider -q -s -m failover --basetemp "$tmp" tests/e2e/test_faults.py >"$log" 2>&1; then
    passed=$((passed + 1)); verdict=passed
    rm -rf "$tmp"
  else
    failed=$((failed + 1)); verdict=FAILED
  fi
  echo "run $run/$runs: $verdict in $(($(date +%s) - started)) s ($(grep -hoE 'fenced [0-9]+ times' "$log" | head -1)); log $log"
done
echo "failover tests: $passed of $runs runs passed, $failed failed"
[ "$failed" -eq 0 ]
