#!/usr/bin/env bash
# StartJob throughput with an empty queue, before and after the queue: builds
# baton at BEFORE (default: the parent of the commit that added
# StartJobRequest.queue_timeout) and at AFTER (default: the working tree),
# then runs
#   baton bench --local --jobs 2000 --clients 16 --baseline=false -o json
# with each in turn, RUNS times (default 5), the order swapped every pair so
# that a drift in the machine's load weighs on both alike. It prints each
# run's jobs/s and the scheduler's CPU per job (less disturbed by other
# work on the machine than jobs/s), the ratio after/before of each pair's
# jobs/s, and the ratios of the medians.
#
#   tools/bench-queue-ab.sh [BEFORE [RUNS [AFTER]]]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
before=${1:-}
runs=${2:-5}
after=${3:-}
if [ -z "$before" ]; then
  api=$(git -C "$root" log --format=%H --grep='^API: JOB_STATE_QUEUED, StartJobRequest.queue_timeout' -n 1)
  if [ -z "$api" ]; then
    echo "bench-queue-ab: no commit titled \"API: JOB_STATE_QUEUED, StartJobRequest.queue_timeout ...\"; name BEFORE" >&2
    exit 2
  fi
  before=$(git -C "$root" rev-parse "$api^")
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# build REV OUT builds cmd/baton at REV (empty: the working tree).
build() {
  local src=$root
  if [ -n "$1" ]; then
    src=$tmp/src-$2
    mkdir "$src"
    git -C "$root" archive "$1" | tar -x -C "$src"
  fi
  (cd "$src" && go build -o "$tmp/$2" ./cmd/baton)
}
build "$before" baton-before
build "$after" baton-after

# measure BINARY prints jobs_per_sec of the one cluster measured
# (--baseline=false, no --mtls) and the scheduler's cpu_ms_per_job.
measure() {
  local out
  out=$("$1" bench --local --jobs 2000 --clients 16 --baseline=false -o json)
  printf '%s\n' "$out" | sed -n 's/.*"jobs_per_sec": *\([0-9.eE+-]*\).*/\1/p' | head -n 1 | awk '{ printf "%.1f ", $1 }'
  printf '%s\n' "$out" | sed -n 's/.*"scheduler": *\([0-9.eE+-][0-9.eE+-]*\),*$/\1/p' | head -n 1 | awk '{ printf "%.3f\n", $1 }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "before: $(git -C "$root" log --format='%h %s' -n 1 "$before" | cut -c 1-72)"
if [ -n "$after" ]; then
  echo "after:  $(git -C "$root" log --format='%h %s' -n 1 "$after" | cut -c 1-72)"
else
  echo "after:  the working tree at $(git -C "$root" rev-parse --short HEAD)"
fi
echo "load average: $(cut -d ' ' -f 1-3 /proc/loadavg)"
printf 'run\tbefore jobs/s\tafter jobs/s\tafter/before\tscheduler CPU ms/job before\tafter\n'
: >"$tmp/r"
for i in $(seq 1 "$runs"); do
  if [ $((i % 2)) -eq 1 ]; then
    read -r b bc < <(measure "$tmp/baton-before")
    read -r a ac < <(measure "$tmp/baton-after")
  else
    read -r a ac < <(measure "$tmp/baton-after")
    read -r b bc < <(measure "$tmp/baton-before")
  fi
  r=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$a" "$r" "$bc" "$ac" >>"$tmp/r"
  printf '%d\t%s\t%s\t%s\t%s\t%s\n' "$i" "$b" "$a" "$r" "$bc" "$ac"
done
col() { cut -f "$1" "$tmp/r" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo "load average: $(cut -d ' ' -f 1-3 /proc/loadavg)"
echo "median jobs/s: before $(col 1), after $(col 2); ratio of medians $(ratio "$(col 2)" "$(col 1)"), median of pair ratios $(col 3)"
echo "median scheduler CPU ms/job: before $(col 4), after $(col 5); ratio $(ratio "$(col 5)" "$(col 4)")"
