#!/usr/bin/env bash
# The whole test suite, as root: formatting, lints, the packages (built, then the .deb
# installed in a fresh Debian root and the .rpm read), unit tests, the end-to-end tests on a
# real containerd, real network namespaces and real BPF programs (bosun's own image among
# them), and a smoke run of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
./scripts/package.sh
./scripts/package.sh check
cargo nextest run --workspace --no-fail-fast
# Every benchmark once, at its smallest: a benchmark that no longer runs fails the suite.
./scripts/bench.sh smoke
