#!/usr/bin/env bash
# Prints, after `make test`, every skip that the tests reported and why: pytest's
# "SKIPPED [n] file:line: reason" lines (pytest runs with -rs) and the reason a program
# printed before exiting 77, each under its ctest test. A skip is never counted as a
# pass silently: if something did not run, this says what and why.
# Usage: skip_summary.sh build/Testing/Temporary/LastTest.log
set -euo pipefail
log="${1:?usage: skip_summary.sh LastTest.log}"
[[ -f $log ]] || { echo "skip summary: no ctest log at $log"; exit 0; }
awk '
  /^[0-9]+\/[0-9]+ Testing: / { test = $3; next }
  /^SKIPPED \[/ || /[Ss]kipped$/ || /; skipped/ { lines[++n] = "  " test ": " $0 }
  END {
    if (n == 0) { print "skip summary: no test reported a skip"; exit }
    print "skip summary: " n " skip(s) reported by the tests:"
    for (i = 1; i <= n; ++i) print lines[i]
  }' "$log"
