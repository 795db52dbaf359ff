#!/usr/bin/env bash
# bosun's benchmarks, as root: installs what is needed (setup.sh), then builds in release mode
# and runs them (see BENCHMARKS.md).
#
#   ./scripts/bench.sh [--quick] [--samples N]   both benchmarks, pods then services
#   ./scripts/bench.sh pods [ARGS...]            the pod-lifecycle benchmark, on a private
#                                                containerd node. ARGS: a name filter
#                                                (pod_start, pods_at_once, time_to_ready,
#                                                exit_detection, footprint), --quick,
#                                                --samples N
#   ./scripts/bench.sh services [ARGS...]        the Service benchmark: connect latency
#                                                against kube-proxy's iptables rules and a
#                                                rule-free floor, programming time, the
#                                                daemon's memory, for 1000, 10000 and 30000
#                                                Services. ARGS: a name filter (connect,
#                                                programming, memory), --quick (1000 and
#                                                10000, fewer samples), --samples N (connects
#                                                per target), --services N (instead of the
#                                                default sizes; repeatable)
#   ./scripts/bench.sh policy [ARGS...]          the NetworkPolicy benchmark: what the policy
#                                                programs cost a request/response and a new
#                                                connection with 0, 100 and 1000 policies
#                                                against no program, compile and apply
#                                                times, and policy change → enforcement.
#                                                ARGS: a name filter (request_response,
#                                                new_connections, packet_paths, programming,
#                                                enforcement),
#                                                --quick (fewer and shorter samples),
#                                                --samples N (rate samples per configuration
#                                                and policy changes each way)
#   ./scripts/bench.sh nodeport [ARGS...]        node ports served to a client outside the
#                                                node: connection rate and request/response
#                                                latency through bosun's tc programs against
#                                                kube-proxy's iptables NodePort rules and a
#                                                NAT-free floor, for 1000 and 10000 NodePort
#                                                Services; the flows a backend change
#                                                moves under Maglev against a modulo hash;
#                                                and packets per second of one node port
#                                                flow sent back out of the node's uplink by
#                                                bosun's XDP program, against its tc
#                                                programs and a NAT-free floor.
#                                                ARGS: a name filter (traffic, maglev, xdp),
#                                                --quick (fewer samples), --smoke,
#                                                --samples N (connections and round trips
#                                                per target; windows per xdp row)
#   ./scripts/bench.sh proxy [ARGS...]           `bosun proxy` fed by a fake API server with
#                                                1000, 10000 and 30000 Services: initial sync,
#                                                memory, one EndpointSlice change → maps,
#                                                connect latency through a ClusterIP and to no
#                                                Service against a rule-free floor, and the
#                                                connect program's run time. ARGS: a name
#                                                filter (change, connect), --quick (1000 and
#                                                10000, fewer samples), --smoke, --samples N
#                                                (connects per target), --services N (instead
#                                                of the default sizes; repeatable)
#   ./scripts/bench.sh cluster [ARGS...]         the cluster-mode benchmark, bosun joined to a
#                                                private control plane: pod start (against the
#                                                static manifest path and bare CRI), status
#                                                updates, N pods at once, deletion, the
#                                                steady state (RSS, CPU, API requests), and a
#                                                pod failing readiness → out of the datapath
#                                                against → not ready in its EndpointSlice.
#                                                ARGS: a name filter (pod_start,
#                                                status_update, pods_at_once, pod_delete,
#                                                footprint, readiness), --quick, --smoke,
#                                                --samples N
#   ./scripts/bench.sh kubelet_api [ARGS...]     the kubelet API benchmark: exec round trips
#                                                and throughput, logs -f and port-forward
#                                                throughput through bosun's HTTPS port against
#                                                the runtime's streaming URLs and the log file
#                                                read directly, and the daemon's memory with
#                                                100 streams open. ARGS: a name filter
#                                                (exec_round_trip, exec_throughput,
#                                                logs_follow, port_forward, open_streams),
#                                                --quick, --smoke, --samples N
#   ./scripts/bench.sh FILTER... [--quick] ...   as before both existed: the pods benchmark
#                                                with these arguments
#   ./scripts/bench.sh smoke                     every benchmark once with --smoke (one
#                                                sample, the smallest size), to show that
#                                                each still runs; fails if any fails.
#                                                scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Only arguments both benchmarks take: a filter belongs to one of them.
shared_only() {
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --quick) shift ;;
            --samples) [ "$#" -ge 2 ] || return 1; shift 2 ;;
            *) return 1 ;;
        esac
    done
}

bench() {
    local name="$1"
    shift
    cargo bench -p bosun --bench "$name" -- "$@"
}

# Every benchmark, each even if one before it failed; the exit status says whether any did.
smoke() {
    local status=0 name started
    # Built first, so that the times below are the runs' own.
    cargo bench -p bosun --benches --no-run
    for name in pods services nodeport proxy policy cluster kubelet_api; do
        started=$SECONDS
        if bench "$name" --smoke; then
            echo "smoke: $name passed in $((SECONDS - started)) s"
        else
            status=1
            echo "smoke: $name FAILED after $((SECONDS - started)) s" >&2
        fi
    done
    return "$status"
}

./scripts/setup.sh
case "${1:-}" in
    smoke)
        [ "$#" -eq 1 ] || { echo "bench.sh: smoke takes no arguments" >&2; exit 2; }
        smoke
        ;;
    pods | services | nodeport | proxy | policy | cluster | kubelet_api)
        name="$1"
        shift
        bench "$name" "$@"
        ;;
    *)
        if ! shared_only "$@"; then
            bench pods "$@"
            exit
        fi
        # Both, even if the first fails; the exit status says whether either did.
        status=0
        bench pods "$@" || status=$?
        bench services "$@" || status=$?
        exit "$status"
        ;;
esac
