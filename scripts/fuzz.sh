#!/usr/bin/env bash
# Runs each named fuzz harness of $FUZZ_BUILD/tests/fuzz for $FUZZ_SECONDS seconds,
# starting from its seed corpus (tests/fuzz/corpus/<harness>) and growing a working
# corpus in $FUZZ_BUILD/corpus/<harness>. Memory is bounded as ftrain's must be: an
# allocation over 1 GiB, or a process over 2 GiB, is a finding. Prints one line per
# harness (runs, coverage, corpus size, findings) and exits non-zero on any finding.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(dirname "$here")"
build="${FUZZ_BUILD:-build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
status=0
summary=()
for harness in "$@"; do
  work="$build/corpus/$harness"
  artifacts="$build/findings/$harness"
  mkdir -p "$work" "$artifacts"
  log="$build/findings/$harness.log"
  # A request no machine could grant fails as glibc would (NULL, which HDF5 handles);
  # one it could grant over 1 GiB is a finding (-malloc_limit_mb).
  ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=0" \
    "$build/tests/fuzz/$harness" "$work" "$source_dir/tests/fuzz/corpus/$harness" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  found=$(find "$artifacts" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
  summary+=("$(printf '%-22s %4ss  runs %-9s cov %-6s corpus %-5s findings %s (exit %s)' "$harness" "$seconds" \
    "${runs:-?}" "${cov:-?}" "$(find "$work" -type f | wc -l)" "$found" "$rc")")
  if [[ $rc -ne 0 || $found -ne 0 ]]; then
    status=1
    echo "fuzz: $harness found something; its log: $log" >&2
    grep -m3 -E 'ERROR|finding|==[0-9]+==' "$log" >&2 || true
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
