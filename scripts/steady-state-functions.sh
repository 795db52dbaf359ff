#!/usr/bin/env bash
# Profiles a running bosun daemon and adds the functions it ran, hottest first, as glob
# patterns to agent/steady-state-functions.txt (see agent/build.rs). Run it against the daemon
# of `./scripts/bench.sh pods footprint` (and of `cluster footprint`) once its 100 pods are
# Ready (the README's Benchmarks say how), with the binary built from the tree it will be
# committed to. Needs perf (Debian: linux-perf).
#
#   ./scripts/steady-state-functions.sh PID [SECONDS]   (default 45 s)
set -euo pipefail

pid=${1:?usage: $0 PID [SECONDS]}
seconds=${2:-45}
root=$(cd "$(dirname "$0")/.." && pwd)
binary=$(readlink "/proc/$pid/exe")
command -v perf >/dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Call chains unwound from the stack (DWARF), so callers are counted as well as the leaves.
perf record --quiet -e cpu-clock -F 10000 --call-graph dwarf,16384 -p "$pid" \
    -o "$work/perf.data" -- sleep "$seconds"
perf script -i "$work/perf.data" --no-demangle -F ip,sym,dso 2>/dev/null \
    | awk -v dso="($binary)" '$NF == dso { print $2 }' \
    | sort | uniq -c | sort -k1,1nr -k2 | awk '{ print $2 }' > "$work/functions"

# The compiler's hashes vary with the crates' features, versions and contents: each becomes a
# wildcard. Legacy names end in a hash (17h…E); v0 names carry crate disambiguators (Cs…_) and
# back references (B…_, a few base-62 digits) whose offsets move with them; either may gain a
# .llvm.N suffix. (The list's first patterns were written with any run of letters and digits
# taken for a back reference, so some of them also match neighbouring instances.)
sed -E -e 's/\.llvm\.[0-9]+$//' \
    -e 's/17h[0-9a-f]{16}E$/17h/' \
    -e '/^_R/ s/Cs[0-9A-Za-z]+_/Cs*_/g' \
    -e '/^_R/ s/B[0-9A-Za-z]{0,4}_/B*_/g' \
    -e 's/$/*/' "$work/functions" | awk '!seen[$0]++' > "$work/patterns"

# Added to what the list has: a profile samples what runs, and each run catches functions
# the others missed. To start afresh, keep only the list's comment lines first.
out=$root/agent/steady-state-functions.txt
before=$(grep -cv '^#' "$out" || true)
{
    cat "$out"
    cat "$work/patterns"
} | awk '/^#/ || !seen[$0]++' > "$work/list"
mv "$work/list" "$out"
echo "$(wc -l < "$work/functions") functions sampled; $out: $before patterns, now $(grep -cv '^#' "$out")"
