#!/usr/bin/env bash
# bosun's packages, as root on a Debian (bookworm) machine:
#
#   (no argument) | build   build the release binary and write into target/package/ (or
#                           $CARGO_TARGET_DIR/package/) the .deb (cargo-deb), the .rpm
#                           (cargo-generate-rpm) and the OCI image archive (bosun-image, the
#                           writer of the test images); print their paths
#   check                   test what `build` wrote: the .rpm's files, requirements and
#                           scripts (rpm -qp), and the .deb installed, upgraded and purged in
#                           a fresh Debian root made by debootstrap, its unit verified by
#                           systemd-analyze and its binary run there
#
# Versions: the workspace's version plus the git revision, ordered by the number of commits:
# deb 0.1.0+git812.g0123456789ab-1, rpm 0.1.0-1.git812.g0123456789ab; `bosun version` prints
# the same revision. The image is named localhost/bosun/bosun:<workspace version> and
# localhost/bosun/bosun:<workspace version>-git812.g0123456789ab.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET_DIR/package
# The debootstrapped root is cached outside the clone, as the control plane's build is, and
# every check runs on a throw-away overlay of it.
CACHE_DIR=${BOSUN_CACHE_DIR:-/var/cache/bosun}
DEBIAN_SUITE=bookworm
DEBIAN_ROOT=$CACHE_DIR/debootstrap-$DEBIAN_SUITE
# What the package depends on, so that dpkg installs it as on a real worker host.
DEBIAN_ROOT_PACKAGES=systemd,containerd,runc

log() { echo "package: $*" >&2; }
die() {
    log "$*"
    exit 1
}

export PATH=$ROOT/.tools/bin:$PATH

workspace_version() {
    sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml
}

cmd_build() {
    command -v cargo-deb >/dev/null || die "cargo-deb is not installed: run ./scripts/setup.sh"
    command -v cargo-generate-rpm >/dev/null || die "cargo-generate-rpm is not installed: run ./scripts/setup.sh"
    local version revision count
    version=$(workspace_version)
    [ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
    revision=$(git rev-parse --short=12 HEAD)
    count=$(git rev-list --count HEAD)
    local deb_version="$version+git$count.g$revision-1"
    local rpm_release="1.git$count.g$revision"
    mkdir -p "$OUT"
    rm -f "$OUT"/*.deb "$OUT"/*.rpm "$OUT"/bosun-image-*.tar

    log "building bosun $version (git $revision)"
    BOSUN_GIT_REVISION=$revision cargo build --release --locked -p bosun
    local binary=$TARGET_DIR/release/bosun

    log "writing the manual pages"
    # Under target/release/, the one prefix of an asset's path both packagers resolve against
    # the real target directory.
    local man=$TARGET_DIR/release/man
    rm -rf "$man"
    "$binary" man "$man" >/dev/null
    gzip -9n "$man"/*.8

    log "writing the .deb"
    cargo deb -p bosun --no-build --locked --deb-version "$deb_version" --output "$OUT/" >/dev/null
    log "writing the .rpm"
    cargo generate-rpm -p agent --target-dir "$TARGET_DIR" --output "$OUT/" \
        --set-metadata "release = \"$rpm_release\"" >/dev/null

    log "writing the image"
    # The image gets a stripped copy; the packages strip theirs themselves.
    local stage=$OUT/stage
    mkdir -p "$stage"
    strip -o "$stage/bosun" "$binary"
    # Two names: the version (what the DaemonSet names) and the version with the revision.
    cargo run -q --locked -p bosun-tests --bin bosun-image -- --binary "$stage/bosun" \
        --reference "localhost/bosun/bosun:$version" \
        --reference "localhost/bosun/bosun:$version-git$count.g$revision" \
        --out "$OUT/bosun-image-$version.tar" >/dev/null
    rm -rf "$stage"
    ls -1 "$OUT"/*.deb "$OUT"/*.rpm "$OUT"/bosun-image-*.tar
}

# ---------------------------------------------------------------------------------------------
# check

FAILED=0
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then
        echo "ok: $what"
    else
        echo "FAILED: $what" >&2
        FAILED=$((FAILED + 1))
    fi
}
# check_output WHAT PATTERN COMMAND...: COMMAND succeeds and prints a line matching PATTERN.
check_output() {
    local what=$1 pattern=$2
    shift 2
    local output
    if output=$("$@" 2>&1) && grep -Eq -- "$pattern" <<<"$output"; then
        echo "ok: $what"
    else
        echo "FAILED: $what: wanted /$pattern/ from $*, got:" >&2
        sed 's/^/    /' <<<"$output" >&2
        FAILED=$((FAILED + 1))
    fi
}
check_not() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then
        echo "FAILED: $what" >&2
        FAILED=$((FAILED + 1))
    else
        echo "ok: $what"
    fi
}

debian_mirror() {
    # The machine's own Debian source, so no address is written here.
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    echo "$uri"
}

ensure_debian_root() {
    [ -f "$DEBIAN_ROOT/.complete" ] && return 0
    command -v debootstrap >/dev/null || die "debootstrap is not installed: run ./scripts/setup.sh"
    mkdir -p "$CACHE_DIR"
    exec 8>"$CACHE_DIR/debootstrap.lock"
    flock 8
    [ -f "$DEBIAN_ROOT/.complete" ] && return 0
    log "making a $DEBIAN_SUITE root with debootstrap (once per machine, in $DEBIAN_ROOT)"
    rm -rf "$DEBIAN_ROOT.tmp"
    debootstrap --variant=minbase --include="$DEBIAN_ROOT_PACKAGES" "$DEBIAN_SUITE" \
        "$DEBIAN_ROOT.tmp" "$(debian_mirror)" >"$CACHE_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $CACHE_DIR/debootstrap.log"
    # No apt lists or package cache: the root only installs the .deb given to dpkg.
    rm -rf "$DEBIAN_ROOT.tmp"/var/cache/apt/archives/*.deb "$DEBIAN_ROOT.tmp"/var/lib/apt/lists/*
    touch "$DEBIAN_ROOT.tmp/.complete"
    rm -rf "$DEBIAN_ROOT"
    mv "$DEBIAN_ROOT.tmp" "$DEBIAN_ROOT"
}

CHECK_DIR=
cleanup_check() {
    [ -n "$CHECK_DIR" ] || return 0
    local mount
    for mount in "$CHECK_DIR/root/sys/fs/cgroup" "$CHECK_DIR/root/proc" "$CHECK_DIR/root"; do
        mountpoint -q "$mount" && umount -l "$mount"
    done
    rm -rf "$CHECK_DIR"
}

check_rpm() {
    local rpm=$1
    echo "== $rpm"
    local files
    files=$(rpm -qpl "$rpm" 2>/dev/null)
    local path
    for path in /usr/bin/bosun /usr/lib/systemd/system/bosun.service /etc/bosun/config.yaml /etc/sysconfig/bosun \
        /usr/share/man/man8/bosun.8.gz /usr/share/man/man8/bosun-run.8.gz /usr/share/man/man8/bosun-proxy.8.gz; do
        check "rpm -qpl lists $path" grep -qx "$path" <<<"$files"
    done
    check_output "rpm -qp --requires: containerd" '^\(containerd or containerd.io\)' rpm -qp --requires "$rpm"
    check_output "rpm -qp --requires: systemd" '^systemd' rpm -qp --requires "$rpm"
    check_output "rpm -qp --conflicts: kubelet" '^kubelet' rpm -qp --conflicts "$rpm"
    check_output "rpm -qp --conflicts: kube-proxy" '^kube-proxy' rpm -qp --conflicts "$rpm"
    check_output "rpm -qp --scripts: postinstall enables, restarts only on upgrade" 'try-restart bosun.service' rpm -qp --scripts "$rpm"
    check_output "rpm -qp --scripts: preuninstall stops on erase" 'disable --now bosun.service' rpm -qp --scripts "$rpm"
    check_output "rpm -qpc: the configuration files" '^/etc/sysconfig/bosun' rpm -qpc "$rpm"
}

check_deb() {
    local deb=$1 binary_version=$2
    echo "== $deb"
    check_output "Depends names containerd" '^ Depends:.*containerd \| containerd.io' dpkg-deb -I "$deb"
    check_output "Conflicts names kubelet and kube-proxy" '^ Conflicts: kubelet, kube-proxy' dpkg-deb -I "$deb"

    ensure_debian_root
    CHECK_DIR=$(mktemp -d /tmp/bosun-package-check.XXXXXX)
    trap cleanup_check EXIT
    local root=$CHECK_DIR/root
    mkdir -p "$CHECK_DIR/upper" "$CHECK_DIR/work" "$root"
    mount -t overlay overlay -o "lowerdir=$DEBIAN_ROOT,upperdir=$CHECK_DIR/upper,workdir=$CHECK_DIR/work" "$root"
    mount -t proc proc "$root/proc"
    cp "$deb" "$root/tmp/bosun.deb"
    local in_root=(chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin)

    check_output "dpkg -i installs it" 'Setting up bosun' "${in_root[@]}" dpkg -i /tmp/bosun.deb
    local path
    for path in /usr/bin/bosun /lib/systemd/system/bosun.service /etc/bosun/config.yaml /etc/default/bosun \
        /usr/share/man/man8/bosun.8.gz /usr/share/man/man8/bosun-run.8.gz /usr/share/man/man8/bosun-proxy.8.gz; do
        check "installed: $path" test -f "$root$path"
    done
    check_output "bosun-run(8) is a section 8 page naming bosun's version" '^\.TH bosun-run 8 +"bosun [0-9]' \
        zcat "$root/usr/share/man/man8/bosun-run.8.gz"
    check_output "bosun-run(8) documents --pod-manifest-path" 'staticPodPath' \
        zcat "$root/usr/share/man/man8/bosun-run.8.gz"
    check "created: /etc/kubernetes/manifests" test -d "$root/etc/kubernetes/manifests"
    check "postinst enabled bosun.service" test -L "$root/etc/systemd/system/multi-user.target.wants/bosun.service"
    check_output "dpkg lists /etc/bosun/config.yaml as a conffile" '/etc/bosun/config.yaml' \
        "${in_root[@]}" dpkg-query -W -f='${Conffiles}\n' bosun
    # Clean: exit 0 and not one complaint about the unit (warnings exit 0 too).
    local verify verify_status=0
    verify=$("${in_root[@]}" systemd-analyze verify --man=no /lib/systemd/system/bosun.service 2>&1) || verify_status=$?
    check "systemd-analyze verify bosun.service exits 0 (got $verify_status)" test "$verify_status" -eq 0
    check_not "systemd-analyze verify has nothing to say about bosun.service" grep -q 'bosun.service' <<<"$verify"
    [ -z "$verify" ] || sed 's/^/    systemd-analyze: /' <<<"$verify"
    local unit=$root/lib/systemd/system/bosun.service
    check "the unit starts after containerd and bpffs" grep -Eq '^After=.*containerd.service.*sys-fs-bpf.mount' "$unit"
    check "the unit needs /sys/fs/bpf mounted" grep -qx 'RequiresMountsFor=/sys/fs/bpf' "$unit"
    check "the unit restarts always" grep -qx 'Restart=always' "$unit"
    check "stopping the unit signals bosun alone" grep -qx 'KillMode=process' "$unit"
    check "bosun --version prints the version and revision ($binary_version)" \
        grep -qxF "bosun $binary_version" <<<"$("${in_root[@]}" bosun --version 2>&1)"
    # The root has no cgroup2 mount of its own: preflight says so, then passes once it has.
    local preflight_status=0
    "${in_root[@]}" bosun preflight >/dev/null 2>&1 || preflight_status=$?
    check "bosun preflight fails without cgroup2 (got $preflight_status)" test "$preflight_status" -ne 0
    check_output "... and says what is missing" 'needs a cgroup v2 hierarchy' "${in_root[@]}" sh -c 'bosun preflight 2>&1; true'
    mkdir -p "$root/sys/fs/cgroup"
    mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
    check_output "bosun preflight passes on this kernel with cgroup2 mounted" 'cgroup2 at /sys/fs/cgroup: ok' \
        "${in_root[@]}" bosun preflight
    # The shipped configuration parses, and names no pod source yet: exit 3, one clear line.
    local output status=0
    output=$("${in_root[@]}" bosun run --config /etc/bosun/config.yaml 2>&1) || status=$?
    check "bosun run on the shipped configuration exits 3 (bad configuration), got $status" test "$status" -eq 3
    check_output "... saying it has no pod source" 'no pods to run' printf '%s\n' "$output"
    # An upgrade (the same package again) keeps the configuration an admin edited.
    sed -i 's|^#staticPodPath: .*|staticPodPath: /etc/kubernetes/manifests|' "$root/etc/bosun/config.yaml"
    check_output "dpkg -i again (an upgrade) succeeds" 'Setting up bosun' "${in_root[@]}" dpkg -i /tmp/bosun.deb
    check "the upgrade kept the edited configuration" grep -qx 'staticPodPath: /etc/kubernetes/manifests' "$root/etc/bosun/config.yaml"
    check "dpkg -r removes it" "${in_root[@]}" dpkg -r bosun
    check_not "removed: /usr/bin/bosun" test -e "$root/usr/bin/bosun"
    check "remove keeps the configuration" test -f "$root/etc/bosun/config.yaml"
    check_output "dpkg --purge runs bosun run --cleanup" 'nothing installed in /sys/fs/bpf/bosun' \
        "${in_root[@]}" dpkg --purge bosun
    check_not "purged: /etc/bosun/config.yaml" test -e "$root/etc/bosun/config.yaml"
    check_not "purged: /var/lib/bosun" test -e "$root/var/lib/bosun"
    cleanup_check
    CHECK_DIR=
    trap - EXIT
}

cmd_check() {
    [ "$(id -u)" -eq 0 ] || die "check: run as root (it mounts and chroots)"
    local deb rpm
    deb=$(ls "$OUT"/bosun_*.deb 2>/dev/null | head -1)
    rpm=$(ls "$OUT"/bosun-*.rpm 2>/dev/null | head -1)
    [ -n "$deb" ] && [ -n "$rpm" ] || die "no packages in $OUT: run ./scripts/package.sh first"
    command -v rpm >/dev/null || die "rpm is not installed: run ./scripts/setup.sh"
    local version
    version="$(workspace_version) (git $(git rev-parse --short=12 HEAD))"
    check_rpm "$rpm"
    check_deb "$deb" "$version"
    if [ "$FAILED" -gt 0 ]; then
        echo "package check: $FAILED failed" >&2
        exit 1
    fi
    echo "package check: all passed"
}

case ${1:-build} in
build) cmd_build ;;
check) cmd_check ;;
*)
    sed -n '/^#   /s/^#   //p' "$0" >&2
    exit 2
    ;;
esac
