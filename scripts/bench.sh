#!/usr/bin/env bash
# bosun's pod-lifecycle benchmarks, as root: installs what is needed (setup.sh), then builds
# in release mode and runs them on a private containerd node (see BENCHMARKS.md).
# Arguments go to the benchmark: a name filter (pod_start, pods_at_once, time_to_ready,
# exit_detection, footprint), --quick, --samples N.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo bench -p bosun --bench pods -- "$@"
