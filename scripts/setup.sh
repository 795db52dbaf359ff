#!/usr/bin/env bash
# Installs what building and testing bosun needs on a Debian (bookworm) machine, as root.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

BPF_LINKER_VERSION=0.10.4
# The packages' builders (./scripts/package.sh).
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
PACKAGES=(
    debootstrap rpm                              # the package checks: a Debian root, rpm -qp
    containerd runc containernetworking-plugins # the runtime the tests drive over CRI
    busybox-static gcc libc6-dev                 # the test images: busybox and a static pause
    iptables iproute2                            # CNI plugins and network namespaces
    ethtool                                      # the XDP tests: offloads off, as on a wire
    qemu-system-x86                              # the clsact fallback's test on Debian's 6.1 kernel
    protobuf-compiler                            # containerd-client's build script runs protoc
    systemd-container dbus                       # the systemd cgroup driver's test: a systemd in a container
    ca-certificates
)

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v rustup >/dev/null || ! command -v cargo >/dev/null; then
    echo "setup: rustup and cargo are required (https://rustup.rs); they are not Debian packages" >&2
    exit 1
fi
# The eBPF programs build with nightly's build-std; everything else builds on stable.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
    || rustup component add rust-src --toolchain nightly

if ! .tools/bin/bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    echo "setup: installing bpf-linker $BPF_LINKER_VERSION into .tools/"
    cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked --root .tools
fi

# cargo-deb and cargo-generate-rpm print their versions as `cargo-deb 3.8.0`.
install_tool() {
    local name=$1 version=$2
    if ! ".tools/bin/$name" --version 2>/dev/null | grep -q "$version"; then
        echo "setup: installing $name $version into .tools/"
        cargo install "$name@$version" --locked --root .tools
    fi
}
install_tool cargo-deb "$CARGO_DEB_VERSION"
install_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked

# Debian bookworm's own kernel (6.1: no tcx), which the clsact fallback's test boots under
# qemu: its image and the modules the tests need, numbered in the order they load, from the
# newest 6.1 package the mirror has.
KERNEL_DIR=.tools/kernel-6.1
KERNEL_MODULES=(net/llc/llc.ko net/802/stp.ko net/bridge/bridge.ko net/bridge/br_netfilter.ko
    drivers/net/veth.ko net/sched/sch_ingress.ko net/sched/cls_bpf.ko)
if [ ! -f "$KERNEL_DIR/modules/${#KERNEL_MODULES[@]}-cls_bpf.ko" ]; then
    package=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9.]+-[0-9]+-amd64$' \
        | cut -d' ' -f1 | sort -V | tail -n1)
    if [ -z "$package" ]; then
        echo "setup: no linux-image-6.1.*-amd64 package in the apt sources" >&2
        exit 1
    fi
    echo "setup: fetching $package into $KERNEL_DIR"
    rm -rf "$KERNEL_DIR.tmp" && mkdir -p "$KERNEL_DIR.tmp/modules"
    (cd "$KERNEL_DIR.tmp" && apt-get download -qq "$package" 2>/dev/null && dpkg-deb -x ./*.deb root)
    cp "$KERNEL_DIR.tmp"/root/boot/vmlinuz-* "$KERNEL_DIR.tmp/vmlinuz"
    number=0
    for module in "${KERNEL_MODULES[@]}"; do
        number=$((number + 1))
        cp "$KERNEL_DIR.tmp"/root/lib/modules/*/kernel/"$module" \
            "$KERNEL_DIR.tmp/modules/$number-$(basename "$module")"
    done
    echo "$package" > "$KERNEL_DIR.tmp/package"
    rm -rf "$KERNEL_DIR.tmp/root" "$KERNEL_DIR.tmp"/*.deb "$KERNEL_DIR"
    mv "$KERNEL_DIR.tmp" "$KERNEL_DIR"
fi

# The Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) that tests run
# bosun against: built from Debian's source once per machine and cached outside the clone.
./scripts/control-plane.sh build >/dev/null
