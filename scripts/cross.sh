#!/usr/bin/env bash
# Cross-compiles Picket for ARM from an x86_64 Debian host without Docker, and tests the result
# (see cross/README.md).
#
#   scripts/cross.sh setup              install what is missing (idempotent; root for apt)
#   scripts/cross.sh build [TARGET...]  static, size-optimised agents (default: the musl targets)
#   scripts/cross.sh unit [TARGET...]   unit tests of picket-common and picket-agent under qemu-user
#   scripts/cross.sh sizes [TARGET...]  table of binary sizes, also in target/cross/sizes.tsv
#   scripts/cross.sh vm [ARCH[@KERNEL]...]  boot Debian's kernels, Linux 6.1 and 5.10, with the agent:
#                                       aarch64, armv7 (the static agents) and x86_64 (the host's
#                                       release agent, built here first) (tests/arm/vm-test.sh)
#   scripts/cross.sh test               all of the above for both musl targets (what CI runs), and
#                                       checks that their eBPF objects are the Yocto layer's
#                                       released ones (yocto-layer/meta-picket/scripts/release-ebpf-objects.sh)
#
# TARGET is one of aarch64-unknown-linux-gnu, aarch64-unknown-linux-musl,
# armv7-unknown-linux-gnueabihf, armv7-unknown-linux-musleabihf, or `all`.
# PICKET_PROFILE selects the cargo profile of `build` (default release-small). Its agents are
# stripped and abort on panic: CARGO_PROFILE_<PROFILE>_STRIP and _PANIC, set here unless given.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '\033[1m[cross]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[cross]\033[0m %s\n' "$*" >&2; exit 1; }

ALL_TARGETS=(aarch64-unknown-linux-gnu aarch64-unknown-linux-musl
    armv7-unknown-linux-gnueabihf armv7-unknown-linux-musleabihf)
MUSL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
PROFILE="${PICKET_PROFILE:-release-small}"
STRIP_VAR="CARGO_PROFILE_$(echo "$PROFILE" | tr 'a-z-' 'A-Z_')_STRIP"
PANIC_VAR="${STRIP_VAR%_STRIP}_PANIC"
export "$STRIP_VAR=${!STRIP_VAR:-true}" "$PANIC_VAR=${!PANIC_VAR:-abort}"
SIZES="$ROOT/target/cross/sizes.tsv"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Sets TARGETS from the arguments: none means the musl targets, `all` all four.
select_targets() {
    TARGETS=()
    if [ $# -eq 0 ]; then
        TARGETS=("${MUSL_TARGETS[@]}")
    elif [ "$1" = all ]; then
        TARGETS=("${ALL_TARGETS[@]}")
    else
        local t
        for t in "$@"; do
            case " ${ALL_TARGETS[*]} " in
                *" $t "*) TARGETS+=("$t") ;;
                *) die "unknown target $t (one of: ${ALL_TARGETS[*]}, all)" ;;
            esac
        done
    fi
}

# Whether rustup has the prebuilt standard library of `target` for the active toolchain.
has_std() {
    rustup target list --installed 2>/dev/null | grep -qx "$1"
}

setup() {
    local need_update=0 arch pkgs=() pkg
    for arch in arm64 armhf; do
        if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
            log "adding the Debian architecture $arch (ARM kernels and busybox for the VM test)"
            $SUDO dpkg --add-architecture "$arch"
            need_update=1
        fi
    done
    for pkg in gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf \
        libc6-dev-armhf-cross qemu-user-static qemu-system-arm qemu-system-x86 cpio file musl-dev:armhf; do
        dpkg -s "$pkg" >/dev/null 2>&1 || pkgs+=("$pkg")
    done
    # The package lists must know the foreign architectures before anything is downloaded.
    if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1 ||
        ! apt-cache show busybox-static:armhf >/dev/null 2>&1; then
        need_update=1
    fi
    if [ ${#pkgs[@]} -gt 0 ] || [ "$need_update" -eq 1 ]; then
        # A mirror in the middle of a sync fails one index; what is there is still usable.
        $SUDO apt-get update -qq || log "apt-get update reported errors; carrying on with the lists it got"
    fi
    if [ ${#pkgs[@]} -gt 0 ]; then
        log "installing Debian packages: ${pkgs[*]}"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
    local target missing=()
    for target in "${ALL_TARGETS[@]}"; do
        has_std "$target" || missing+=("$target")
    done
    for target in "${missing[@]}"; do
        log "adding the Rust target $target"
        if ! rustup target add "$target" >/dev/null 2>&1; then
            case "$target" in
                *musl*) log "no prebuilt standard library for $target here: it is built from source (rust-src) with Debian's musl" ;;
                *) die "rustup target add $target failed" ;;
            esac
        fi
    done
    if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
        rustup component add rust-src >/dev/null
    fi
}

# Extra cargo arguments and environment for a musl target whose standard library rustup could
# not provide: build it from rust-src (RUSTC_BOOTSTRAP for -Z build-std) against Debian's musl,
# with the C runtime objects gathered in a directory that rustc searches first.
musl_from_source() {
    local target=$1 triple=arm-linux-musleabihf gcc=arm-linux-gnueabihf debarch=armhf
    case "$target" in
        aarch64-*) triple=aarch64-linux-musl gcc=aarch64-linux-gnu debarch=arm64 ;;
    esac
    local sysroot="$ROOT/target/cross/musl-$target"
    if [ ! -e "$sysroot/libc.a" ]; then
        local musl="/usr/lib/$triple" gccdir
        [ -e "$musl/libc.a" ] || die "$target: no $musl/libc.a (apt-get install musl-dev:$debarch)"
        gccdir=$(dirname "$("$gcc-gcc" -print-libgcc-file-name)")
        mkdir -p "$sysroot"
        cp "$musl"/{crt1.o,crti.o,crtn.o,Scrt1.o,rcrt1.o,libc.a} "$gccdir"/{crtbegin.o,crtend.o,crtbeginS.o,crtendS.o} "$sysroot/"
        # The unwinder: libgcc's, under the name Rust's musl targets link (libunwind.a).
        cp "$gccdir/libgcc_eh.a" "$sysroot/libunwind.a"
    fi
    local var
    var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
    export "$var=-L native=$sysroot"
    export RUSTC_BOOTSTRAP=1
    BUILD_STD=(-Z "build-std=std,panic_abort")
}

# Sets BUILD_STD (extra cargo arguments) for `target`.
prepare_target() {
    BUILD_STD=()
    if ! has_std "$1"; then
        case "$1" in
            *musl*) musl_from_source "$1" ;;
            *) die "no standard library for $1: run scripts/cross.sh setup" ;;
        esac
    fi
}

build() {
    local target
    select_targets "$@"
    for target in "${TARGETS[@]}"; do
        prepare_target "$target"
        log "building picket for $target (profile $PROFILE)"
        (
            cargo build --locked --profile "$PROFILE" -p picket-agent --target "$target" "${BUILD_STD[@]}"
        )
        local bin="target/$target/$PROFILE/picket"
        log "$bin: $(file -b "$bin")"
        case "$target" in
            *musl*) file -b "$bin" | grep -q 'statically linked' || die "$bin is not statically linked" ;;
        esac
        unset RUSTC_BOOTSTRAP
    done
}

unit() {
    local target results="$ROOT/target/cross/unit.tsv"
    mkdir -p "$ROOT/target/cross"
    select_targets "$@"
    for target in "${TARGETS[@]}"; do
        prepare_target "$target"
        log "unit tests of picket-common and picket-agent on $target, under qemu-user"
        local out="$ROOT/target/cross/unit-$target.log"
        # The unit tests do not load the sensors (qemu-user has no bpf()): no eBPF object needed;
        # the network guard's test against the kernel is skipped (it runs natively). Nor has it
        # fanotify_init(): the exec listener's test against the kernel is skipped (it runs
        # natively, and the listener runs in the ARM VMs below).
        # No debug information and no incremental state: a one-off build, done sooner.
        # One test at a time: under qemu-user, a fork while another thread of the test binary
        # runs can leave the child stuck in the emulator before its exec (seen once: a test that
        # spawns a process waited on its child for good). A run that still hangs ends at the
        # timeout, with the log.
        local status=0
        AYA_BUILD_SKIP=1 CARGO_PROFILE_DEV_DEBUG=false CARGO_PROFILE_DEV_INCREMENTAL=false timeout -k 10 1200 \
            cargo test --locked -p picket-common -p picket-agent --lib --bins \
            --target "$target" "${BUILD_STD[@]}" -- --test-threads=1 \
            --skip sensors::fanotify::tests::sees_the_exec_of_a_process_that_exits_at_once \
            --skip sensors::guard::tests::refuses_and_reports_on_the_running_kernel \
            >"$out" 2>&1 || status=$?
        [ "$status" -ne 124 ] || log "$target: the unit tests did not finish within 1200 s (build included)"
        grep -E '^(test result|     Running)' "$out" >&2 || true
        unset RUSTC_BOOTSTRAP
        local passed failed
        passed=$(awk '/^test result:/ { s += $4 } END { print s + 0 }' "$out")
        failed=$(awk '/^test result:/ { s += $6 } END { print s + 0 }' "$out")
        printf '%s\t%s\t%s\n' "$target" "$passed" "$failed" >>"$results"
        if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || ! grep -q '^test result: ok' "$out"; then
            tail -n 40 "$out" >&2
            die "unit tests failed on $target ($passed passed, $failed failed; log: $out)"
        fi
        log "$target: $passed unit tests passed under qemu-user"
    done
}

sizes() {
    local target bin bytes gz
    select_targets "$@"
    mkdir -p "$(dirname "$SIZES")"
    printf 'target\tprofile\tbytes\tgzip_bytes\tlinkage\n' >"$SIZES"
    printf '%-34s %-14s %12s %12s  %s\n' target profile bytes gzip linkage >&2
    for target in "${TARGETS[@]}"; do
        bin="target/$target/$PROFILE/picket"
        [ -f "$bin" ] || die "no $bin: run scripts/cross.sh build $target"
        bytes=$(stat -c %s "$bin")
        gz=$(gzip -9 -c "$bin" | wc -c)
        local linkage=dynamic
        file -b "$bin" | grep -q 'statically linked' && linkage=static
        file -b "$bin" | grep -q 'not stripped' && linkage="$linkage, not stripped"
        printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$PROFILE" "$bytes" "$gz" "$linkage" >>"$SIZES"
        printf '%-34s %-14s %12s %12s  %s\n' "$target" "$PROFILE" "$bytes" "$gz" "$linkage" >&2
    done
    log "sizes written to ${SIZES#"$ROOT"/}"
}

vm() {
    # The x86_64 VMs boot the host's release agent: built (or found up to date) first.
    local arg need_host=0
    [ $# -gt 0 ] || need_host=1
    for arg in "$@"; do
        case "$arg" in x86_64*) need_host=1 ;; esac
    done
    if [ "$need_host" -eq 1 ]; then
        log "building the host's release agent for the x86_64 VMs"
        cargo build --locked --release -p picket-agent
    fi
    bash tests/arm/vm-test.sh "$@"
}

ci() {
    local t0 t
    t0=$(date +%s)
    setup
    t=$(date +%s)
    build
    log "build: $(($(date +%s) - t)) s"
    # The eBPF objects these agents embed are the Yocto layer's released ones, byte for byte.
    bash yocto-layer/meta-picket/scripts/release-ebpf-objects.sh --check \
        aarch64="target/aarch64-unknown-linux-musl/$PROFILE" arm="target/armv7-unknown-linux-musleabihf/$PROFILE"
    sizes
    t=$(date +%s)
    : >"$ROOT/target/cross/unit.tsv"
    unit
    log "unit tests under qemu-user: $(($(date +%s) - t)) s"
    t=$(date +%s)
    vm
    log "kernel VMs (aarch64, armv7, x86_64 on Linux 6.1 and 5.10): $(($(date +%s) - t)) s"
    log "cross step done in $(($(date +%s) - t0)) s"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    setup) setup ;;
    build) build "$@" ;;
    unit) unit "$@" ;;
    sizes) sizes "$@" ;;
    vm) vm "$@" ;;
    test) ci ;;
    *) die "usage: $0 setup | build [TARGET...] | unit [TARGET...] | sizes [TARGET...] | vm [ARCH...] | test" ;;
esac
