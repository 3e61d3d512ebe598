#!/usr/bin/env bash
# Checkpoint bandwidth benchmark: ftrain-bench-checkpoint under mpirun with 1, 2 and 4
# ranks (more ranks than cores is allowed), each saving and loading the same amount of
# state per rank in the same directory. Prints one Markdown table of all three runs (the
# medians of their repeats), where a sync save's time goes, and the machine.
#
# usage: bench/checkpoint.sh [ftrain-bench-checkpoint options ...]
#   e.g. --dir /scratch/x (the disk to measure; default build/bench/checkpoint),
#        --mib-per-rank 64, --repeats 5, --drop-caches (root: load from the disk, not
#        from the page cache). RANKS="1 2 4 8" changes the rank counts.
# Builds nothing: needs build/ftrain-bench-checkpoint
#   (cmake --build build --target ftrain-bench-checkpoint).
# Writes build/bench/checkpoint-results.jsonl (every repeat of every run) and the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
RANKS="${RANKS:-1 2 4}"
bench="$BUILD/ftrain-bench-checkpoint"

fail() { echo "bench/checkpoint.sh: $*" >&2; exit 1; }
[[ -x "$bench" ]] || fail "$bench missing; run 'cmake --build $BUILD --target ftrain-bench-checkpoint'"

out="$BUILD/bench"
mkdir -p "$out"
results="$out/checkpoint-results.jsonl"
rm -f "$results"

# Open MPI as root, more ranks than cores, one thread per rank (as the tests run it).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMP_NUM_THREADS=1

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ranks in $RANKS; do
  command=(mpirun -np "$ranks" --oversubscribe --bind-to none "$bench" --json "$results" "$@")
  echo "bench/checkpoint.sh: ${command[*]}" >&2
  "${command[@]}" > "$out/checkpoint-ranks$ranks.md"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
"$bench" --report "$results"
echo "load average before / after: $load_before / $load_after"
