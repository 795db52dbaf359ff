#!/usr/bin/env bash
# The whole test suite, as root: formatting, lints, unit tests, and the end-to-end tests
# on a real containerd, real network namespaces and real BPF programs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
