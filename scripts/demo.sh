#!/usr/bin/env bash
# bosun on the embedded default: standalone, pods from the example manifests in
# examples/manifests, on a private containerd node (CRI, CNI, images built here, no registry
# needed); shown through `bosun get pods` and the crictl-style CLI. A Service in the examples
# shows the service proxy: its ClusterIP reached from the host and from a pod, its node port
# and load balancer IP from an "outside" network namespace over a veth. A NetworkPolicy
# lets only the client pod reach the web pods: an allowed and a denied connection, and the
# drop in `bosun monitor`.
#
# With --cluster, bosun also joins a local control plane (etcd, kube-apiserver and
# kube-controller-manager 1.20.2, built from Debian's source by scripts/control-plane.sh) as the
# node's kubelet: the pod in examples/cluster is created in the API server and shown with
# kubectl (`get nodes,pods -o wide`, `get events`).
#
#   BOSUN_DEMO_DIR   where the node lives (default /run/bosun-demo)
#   BOSUN_DEMO_KEEP  1: keep the node until Ctrl-C (default when run from a terminal);
#                    0: tear it down as soon as the pods have been shown
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=0
if [ "${1:-}" = "--cluster" ]; then cluster=1; fi
./scripts/setup.sh
cargo build --quiet -p bosun -p bosun-tests --bins

dir=${BOSUN_DEMO_DIR:-/run/bosun-demo}
bpf_dir=/sys/fs/bpf/bosun-demo
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
"$testnode" up --dir "$dir" --name demo >"$out" &
node=$!
daemon=
cleanup() {
    [ -n "$daemon" ] && { kill -TERM "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; }
    # Before the node goes: its directory holds the control plane's.
    if [ "$cluster" = 1 ]; then
        ./scripts/control-plane.sh down "$dir/control-plane" >/dev/null 2>&1 || true
    fi
    kill -TERM "$node" 2>/dev/null || true
    wait "$node" 2>/dev/null || true
    # Pod cgroups the runtime leaves behind, leaf first.
    find /sys/fs/cgroup -depth -type d -path '*/bosun-demo*' -exec rmdir {} + 2>/dev/null || true
    "$bosun" run --cleanup --bpf-dir "$bpf_dir" >/dev/null 2>&1 || true
    ip netns del bosun-demo-out 2>/dev/null || true
    ip link del bdemo-out 2>/dev/null || true
    rm -f "$out"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
    [ -s "$out" ] && break
    if ! kill -0 "$node" 2>/dev/null; then
        echo "demo: the node did not come up" >&2
        exit 1
    fi
    sleep 0.1
done
endpoint=$(head -n 1 "$out")
export CONTAINER_RUNTIME_ENDPOINT=$endpoint
echo "node up: CRI endpoint $endpoint"

# "Outside": a network namespace on a veth, the node at 192.168.254.1, a client at .2 that
# routes everything (the load balancer IP .100 too) to the node.
ip netns del bosun-demo-out 2>/dev/null || true
ip link del bdemo-out 2>/dev/null || true
ip netns add bosun-demo-out
ip link add bdemo-out type veth peer name eth0 netns bosun-demo-out
ip addr add 192.168.254.1/24 dev bdemo-out
ip link set bdemo-out up
ip -n bosun-demo-out addr add 192.168.254.2/24 dev eth0
ip -n bosun-demo-out link set eth0 up
ip -n bosun-demo-out link set lo up
ip -n bosun-demo-out route add default via 192.168.254.1
echo 1 >/proc/sys/net/ipv4/ip_forward

# bosun itself: the node daemon, on the example manifests.
# Only the memory threshold of kubelet's hard eviction defaults: a development machine's
# disk, shared with builds, is often fuller than the disk thresholds allow, and the demo's
# pods would be evicted for it.
cat >"$dir/bosun.yaml" <<CONFIG
staticPodPath: $PWD/examples/manifests
cgroupRoot: /bosun-demo
podLogsDir: $dir/pod-logs
bpfDir: $bpf_dir
evictionHard: {memory.available: 100Mi}
CONFIG
join=()
if [ "$cluster" = 1 ]; then
    kubectl_dir=$(./scripts/control-plane.sh build)
    kubectl() { "$kubectl_dir/kubectl" --kubeconfig "$dir/control-plane/admin.kubeconfig" "$@"; }
    ./scripts/control-plane.sh up "$dir/control-plane" >/dev/null
    join=(--kubeconfig "$(./scripts/control-plane.sh node-kubeconfig "$dir/control-plane" demo-node)")
    echo "control plane up: kubeconfig $dir/control-plane/admin.kubeconfig"
fi
"$bosun" run --config "$dir/bosun.yaml" --container-runtime-endpoint "$endpoint" \
    --root-dir "$dir/bosun" --hostname-override demo-node \
    --external-interfaces bdemo-out --nodeport-addresses 192.168.254.1/32 \
    "${join[@]}" 2>"$dir/bosun.log" &
daemon=$!
echo "bosun run: manifests in examples/manifests, log in $dir/bosun.log"

show() { echo; echo "\$ bosun $*"; "$bosun" "$@"; }
for _ in $(seq 1 300); do
    "$bosun" get pods --root-dir "$dir/bosun" 2>/dev/null | grep -q '^web-demo-node  *1/1  *Running' && break
    sleep 0.1
done
sleep 3 # long enough for the init container to finish and the crashing pod to restart once
show get pods -o wide --root-dir "$dir/bosun"
show pods
show ps -a
ip=$("$bosun" get pods web-demo-node -o json --root-dir "$dir/bosun" | sed -n 's/.*"podIP": "\(.*\)".*/\1/p')
echo; echo "\$ wget -q -O - http://$ip:8080/"
busybox wget -q -O - "http://$ip:8080/"
show logs "$("$bosun" ps -q --name app --state running)"
show get events --for web-demo-node --root-dir "$dir/bosun"

# The Service: what is desired, what the maps hold, and connections to its ClusterIP.
for _ in $(seq 1 100); do
    "$bosun" get endpoints web --root-dir "$dir/bosun" 2>/dev/null | grep -q '10.*,10' && break
    sleep 0.1
done
show get services --root-dir "$dir/bosun"
show get endpoints --root-dir "$dir/bosun"
show dp services --bpf-dir "$bpf_dir"
show dp backends --bpf-dir "$bpf_dir"
echo; echo "\$ for i in 1 2 3 4 5 6; do wget -q -O - http://10.96.0.80/; done"
for _ in 1 2 3 4 5 6; do timeout 5 busybox wget -q -O - http://10.96.0.80/; done
# From outside: the node port and the load balancer IP. This client is still a process of
# this machine, so bosun's socket programs balance its connect() itself; packets from other
# machines are served by the tc programs on bdemo-out (`bosun dp conntrack` lists their flows).
echo; echo "\$ ip netns exec bosun-demo-out wget -q -O - http://192.168.254.1:30080/   # node port"
ip netns exec bosun-demo-out timeout 5 busybox wget -q -O - http://192.168.254.1:30080/ || true
echo; echo "\$ ip netns exec bosun-demo-out wget -q -O - http://192.168.254.100/       # load balancer IP"
ip netns exec bosun-demo-out timeout 5 busybox wget -q -O - http://192.168.254.100/ || true
sleep 2 # a few more rounds of the client pod
client=$("$bosun" pods -q --name client- --state ready)
intruder=$("$bosun" pods -q --name intruder- --state ready)
show logs --tail 4 "$("$bosun" ps -q --name wget --pod "$client" --state running)"

# The NetworkPolicy: the web pods let in only pods labelled role=client.
show get networkpolicies --root-dir "$dir/bosun"
echo; echo "\$ bosun exec CLIENT wget -q -O - http://10.96.0.80/     # allowed: role=client"
"$bosun" exec "$("$bosun" ps -q --name wget --pod "$client" --state running)" \
    timeout 3 wget -q -O - http://10.96.0.80/ || true
echo; echo "\$ bosun exec INTRUDER wget -q -O - http://10.96.0.80/   # denied: no label"
"$bosun" exec "$("$bosun" ps -q --name wget --pod "$intruder" --state running)" \
    sh -c 'timeout 2 wget -q -O - http://10.96.0.80/ || echo "no answer (dropped)"' || true
echo; echo "\$ timeout 5 bosun monitor --verdict dropped    # the intruder's next tries"
timeout 5 "$bosun" monitor --verdict dropped --bpf-dir "$bpf_dir" --root-dir "$dir/bosun" | head -n 3 || true
show dp policies --bpf-dir "$bpf_dir"

if [ "$cluster" = 1 ]; then
    # Cluster mode: a pod created in the API server, run by bosun as the node's kubelet.
    echo; echo "\$ kubectl apply -f examples/cluster/hello.yaml"
    kubectl apply -f examples/cluster/hello.yaml
    for _ in $(seq 1 300); do
        kubectl get pod hello -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True && break
        sleep 0.2
    done
    echo; echo "\$ kubectl get nodes,pods -o wide"
    kubectl get nodes,pods -o wide
    echo; echo "\$ kubectl get events --sort-by=.lastTimestamp"
    kubectl get events --sort-by=.lastTimestamp | tail -n 15
fi

if [ "$keep" = 1 ]; then
    echo
    echo "The node keeps running. In another shell:"
    echo "  export CONTAINER_RUNTIME_ENDPOINT=$endpoint"
    echo "  $PWD/$bosun get pods --root-dir $dir/bosun"
    echo "  $PWD/$bosun ps        # or pods, images, logs, exec -it ID sh, ..."
    echo "  $PWD/$bosun get services --root-dir $dir/bosun; $PWD/$bosun dp services --bpf-dir $bpf_dir"
    echo "  $PWD/$bosun monitor --bpf-dir $bpf_dir --root-dir $dir/bosun   # policy verdicts, live"
    echo "Add, edit or delete files in examples/manifests and watch the pods follow."
    [ "$cluster" = 1 ] && echo "  $kubectl_dir/kubectl --kubeconfig $dir/control-plane/admin.kubeconfig get nodes,pods -o wide"
    echo "Ctrl-C stops it and removes everything it created."
    wait "$node" || true
fi
