#!/usr/bin/env bash
# The whole test suite N times in a row (default 5) with B busy loops (default 2) beside it, on a
# clean clone of HEAD: the check that the suite does not flake under load (issue 11). Prints one
# line per run (exit code, seconds, pytest's summary) and stops at the first failure.
#
#   bench/suite_under_load.sh [RUNS] [BUSY_LOOPS]
set -uo pipefail
runs=${1:-5}
busy=${2:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work/repo"
cd "$work/repo"
export PYTHONPATH="$work/repo"   # the clone's code, also in the worker processes the tests start
loops=()
for _ in $(seq "$busy"); do
  timeout 36000 bash -c 'while :; do :; done' &
  loops+=($!)
done
trap 'kill "${loops[@]}" 2>/dev/null' EXIT
echo "commit $(git rev-parse --short HEAD), $busy busy loops on $(nproc) cores, logs in $work"
status=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  python -m pytest -q -p no:cacheprovider > "$work/run$i.log" 2>&1
  rc=$?
  echo "run $i: exit $rc, $(( $(date +%s) - start )) s, $(tail -1 "$work/run$i.log")"
  if [ "$rc" -ne 0 ]; then status=$rc; break; fi
done
exit "$status"
