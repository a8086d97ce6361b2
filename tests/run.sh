#!/bin/sh
# Runs each test binary, prints its output, and closes with "N passed, N failed".
build="$1"; shift
passed=0; failed=0; failed_names=""
for t in "$@"; do
    name=$(basename "$t")
    echo "== $name"
    if (cd "$(dirname "$0")/.." && "$t"); then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failed_names="$failed_names $name"
    fi
done
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
