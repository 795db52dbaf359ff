#!/usr/bin/env bash
# bosun on the embedded default: a private containerd node (CRI, CNI, images built here, no
# registry needed) with a demo pod, looked at through bosun's crictl-style CLI.
#
#   BOSUN_DEMO_DIR   where the node lives (default /run/bosun-demo)
#   BOSUN_DEMO_KEEP  1: keep the node until Ctrl-C (default when run from a terminal);
#                    0: tear it down as soon as the pods have been shown
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --quiet -p bosun -p bosun-tests --bins

dir=${BOSUN_DEMO_DIR:-/run/bosun-demo}
if [ -t 0 ]; then keep=${BOSUN_DEMO_KEEP:-1}; else keep=${BOSUN_DEMO_KEEP:-0}; fi
bosun=target/debug/bosun
testnode=target/debug/bosun-testnode

# A node left by a demo that was killed is removed first.
"$testnode" reap >/dev/null 2>&1 || true
if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "demo: $dir is not empty; is another demo running? (set BOSUN_DEMO_DIR)" >&2
    exit 1
fi

out=$(mktemp)
"$testnode" up --dir "$dir" --name demo --demo >"$out" &
node=$!
cleanup() {
    kill -TERM "$node" 2>/dev/null || true
    wait "$node" 2>/dev/null || true
    rm -f "$out"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
    grep -q '^demo pod' "$out" && break
    if ! kill -0 "$node" 2>/dev/null; then
        echo "demo: the node did not come up" >&2
        exit 1
    fi
    sleep 0.1
done
grep -q '^demo pod' "$out" || { echo "demo: the demo pod did not come up in 60 s" >&2; exit 1; }

endpoint=$(head -n 1 "$out")
export CONTAINER_RUNTIME_ENDPOINT=$endpoint
show() { echo; echo "\$ bosun $*"; "$bosun" "$@"; }

echo "node up: CRI endpoint $endpoint"
sed -n 2p "$out"
show version
show pods
show ps
show images
container=$("$bosun" ps -q --name httpd)
show logs "$container"
show exec "$container" wget -q -O - http://127.0.0.1:8080/
show stats

if [ "$keep" = 1 ]; then
    echo
    echo "The node keeps running. In another shell:"
    echo "  export CONTAINER_RUNTIME_ENDPOINT=$endpoint"
    echo "  $PWD/$bosun ps        # or pods, images, logs, exec -it $container sh, ..."
    echo "Ctrl-C stops it and removes everything it created."
    wait "$node" || true
fi
