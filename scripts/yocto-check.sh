#!/usr/bin/env bash
# Checks the Yocto layer (yocto-layer/meta-picket):
#
#  1. oelint-adv (pinned, installed in a venv under target/) over the layer, for scarthgap and
#     wrynose: no finding at all.
#  2. picket-crates.inc is what Cargo.lock gives; the recipe's PV, LIC_FILES_CHKSUM and
#     PICKET_RUST_MIN match Cargo.toml (the rust-version, which no locked crate exceeds); the
#     systemd unit passes `systemd-analyze verify`.
#  3. The image class's scan-and-sign step, scripts/picket-baseline-sign.sh (what
#     picket_baseline.bbclass runs), over a root filesystem laid out as the picket recipe
#     installs it, with the real `picket`: the bundle verifies with the public key, and lists
#     the image's files by their paths on the device. Its refusals: a signing key the image does
#     not trust, an image without picket.
#  4. The released eBPF objects (what the recipe installs) are what this source tree builds:
#     this machine's architecture against the object from scripts/build-ebpf-object.sh (itself
#     byte for byte the one the agent's build.rs embeds), riscv64 against a build of its own
#     (scripts/cross.sh compares aarch64 and arm with its agents' objects); on a mismatch, the
#     message names the command that refreshes them (scripts/release-ebpf-objects.sh).
#  5. The device side: the released eBPF object for this machine, the layer's default
#     configuration and the signed baseline, run by `picket run` in a sandbox that reproduces
#     the systemd unit's capability bounding set, NoNewPrivileges and read-only file system,
#     /sys and /proc/sys: the sensors load and the baseline is enforced. Then the sysvinit
#     script starts, reports and stops the agent.
#  6. Real BitBake: scripts/bitbake-check.sh parses OE-core with the layer alone (wrynose and
#     scarthgap): parsing succeeds, picket is skipped with what to provide (the keys), an image
#     asking for it stops with that reason, the kernel fragment is found, a manufacturer's
#     bbappend gets the released object or its own (about 2 to 3 minutes).
#
# Needs root (step 5 loads eBPF programs). Builds `picket` with cargo unless PICKET is set to
# a binary (scripts/test.sh runs it after the workspace tests, so the build is already there).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
layer=$root/yocto-layer/meta-picket
recipe_dir=$layer/recipes-security/picket

log() { printf '\033[1m[yocto]\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "step 5 loads eBPF programs: run this as root (sudo $0)"
    exit 1
fi

apt_install() {
    apt-get update -qq || log "apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

OELINT_VERSION=9.11.2
venv=$root/target/yocto-venv
if ! "$venv/bin/oelint-adv" --version 2>/dev/null | grep -qx "oelint-adv $OELINT_VERSION"; then
    log "installing oelint-adv $OELINT_VERSION in $venv"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt_install python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "oelint-adv==$OELINT_VERSION"
fi
if ! command -v systemd-analyze >/dev/null; then
    log "installing systemd (for systemd-analyze)"
    apt_install systemd
fi

if [ -z "${PICKET:-}" ]; then
    log "building picket"
    cargo build --locked --package picket-agent
    PICKET=$root/target/debug/picket
fi
PICKET=$(realpath "$PICKET")

work=$(mktemp -d /var/tmp/picket-yocto.XXXXXX)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
# Runs one check (a function) with errexit in a subshell, and counts it.
check() {
    local name=$1
    log "check: $name"
    set +e
    (
        set -euo pipefail
        "$@"
    )
    local rc=$?
    set -e
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        log "FAILED: $name"
    fi
}
fail() {
    echo "$*" >&2
    exit 1
}

# The recipe's substitutions of picket.toml.in, with the given directories.
render_config() { # TEMPLATE SYSCONFDIR LOCALSTATEDIR > FILE
    sed -e 's|@PICKET_DEVICE_ID@|yocto-check|' -e 's|@PICKET_DEVICE_CLASS@|acme-gw|' \
        -e "s|@LOCALSTATEDIR@|$3|g" -e "s|@SYSCONFDIR@|$2|g" "$1"
}

lint() {
    cd "$layer" # .oelint.cfg, with the suppressed rules and why, is read from here
    local files
    files=$(find . -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' -o -name '*.inc' -o -name '*.conf' | sort)
    for release in scarthgap wrynose; do
        # shellcheck disable=SC2086
        out=$("$venv/bin/oelint-adv" --quiet --mode all --relpaths --release "$release" $files 2>&1) ||
            fail "oelint-adv ($release) failed: $out"
        [ -z "$out" ] || fail "oelint-adv ($release) findings: $out"
    done
}

sources_match() {
    python3 "$layer/scripts/gen-crates-inc.py" --check
    # A crate the recipe could not fetch is refused by name.
    printf '[[package]]\nname = "gitdep"\nversion = "1.0.0"\nsource = "git+https://example.invalid/g#0a1b"\n' \
        >"$work/git.lock"
    if python3 "$layer/scripts/gen-crates-inc.py" --lock "$work/git.lock" --out "$work/git.inc" 2>"$work/git.err"; then
        fail "gen-crates-inc.py accepted a git dependency"
    fi
    grep -q "gitdep 1.0.0 comes from git+https" "$work/git.err" || fail "unclear refusal: $(cat "$work/git.err")"
    local version pv
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
    pv=$(sed -n 's/^PV = "\(.*\)+git"$/\1/p' "$recipe_dir/picket_git.bb")
    [ -n "$version" ] && [ "$version" = "$pv" ] ||
        fail "picket_git.bb has PV $pv+git, Cargo.toml's version is $version"
    # The Rust the recipe asks for (PICKET_RUST_MIN) is the workspace's rust-version, and no
    # locked crate needs a newer one (cargo would refuse to build with that version).
    local rust_min min_rv newest
    min_rv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
    rust_min=$(sed -n 's/^PICKET_RUST_MIN = "\(.*\)"$/\1/p' "$recipe_dir/picket_git.bb")
    [ -n "$min_rv" ] && [ "$min_rv" = "$rust_min" ] ||
        fail "picket_git.bb has PICKET_RUST_MIN $rust_min, Cargo.toml's rust-version is $min_rv"
    newest=$(cargo metadata --locked --offline --format-version 1 \
        --filter-platform "$(rustc -vV | sed -n 's/^host: //p')" |
        python3 -c 'import json, sys
v = lambda p: tuple(int(x) for x in p["rust_version"].split("."))
ps = [p for p in json.load(sys.stdin)["packages"] if p.get("rust_version")]
p = max(ps, key=v)
print(p["rust_version"], p["name"], p["version"])')
    read -r newest_rv newest_name newest_version <<<"$newest"
    printf '%s\n%s\n' "$newest_rv" "$min_rv" | sort -V -C ||
        fail "$newest_name $newest_version (Cargo.lock) needs Rust $newest_rv, the workspace's rust-version says $min_rv: raise it, and PICKET_RUST_MIN in picket_git.bb, or pin the crate"
    # LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=N;endline=N;md5=SUM", checked as BitBake
    # does: the MD5 of lines N..N, newlines included.
    local lic line md5 actual
    lic=$(sed -n 's/^LIC_FILES_CHKSUM = "file:\/\/Cargo.toml;beginline=\([0-9]*\);endline=\1;md5=\([0-9a-f]*\)"$/\1 \2/p' \
        "$recipe_dir/picket_git.bb")
    [ -n "$lic" ] || fail "picket_git.bb: LIC_FILES_CHKSUM is not one line of Cargo.toml"
    read -r line md5 <<<"$lic"
    actual=$(sed -n "${line}p" Cargo.toml | md5sum | cut -d' ' -f1)
    [ "$actual" = "$md5" ] || fail "LIC_FILES_CHKSUM: line $line of Cargo.toml is now \
'$(sed -n "${line}p" Cargo.toml)' (md5 $actual, the recipe says $md5): point it at the license line"
    sed -n "${line}p" Cargo.toml | grep -qx 'license = "Apache-2.0"' ||
        fail "LIC_FILES_CHKSUM: line $line of Cargo.toml is not the license"
}

unit_verifies() {
    mkdir -p "$work/unit"
    sed -e "s|@BINDIR@|$(dirname "$PICKET")|g" -e 's|@LIBDIR@|/usr/lib|g' -e 's|@SYSCONFDIR@|/etc|g' \
        "$recipe_dir/files/picket.service" >"$work/unit/picket.service"
    systemd-analyze verify "$work/unit/picket.service"
    # The unit's exposure as systemd rates it: OK (below 5) or better, as it is now (4.5).
    local rating exposure
    rating=$(systemd-analyze security --offline=true "$work/unit/picket.service" | tail -n1)
    echo "$rating" >&2
    exposure=$(sed -n 's/^.*Overall exposure level for [^:]*: \([0-9.]*\) .*$/\1/p' <<<"$rating")
    awk -v e="$exposure" 'BEGIN { exit !(e != "" && e + 0 < 5) }' ||
        fail "the unit's exposure level is ${exposure:-unreadable} (systemd-analyze: $rating), 5 or more: it lost hardening"
    sh -n "$recipe_dir/files/picket.init"
}

# A root filesystem as the image will have it: a few programs and configuration files, and
# picket's files where the recipe installs them.
make_rootfs() { # DIR
    local r=$1
    mkdir -p "$r"/usr/bin "$r"/usr/sbin "$r"/etc/init.d "$r"/etc/picket/trust "$r"/var/lib "$r"/proc "$r"/tmp
    cp /usr/bin/true "$r/usr/bin/true"
    cp "$PICKET" "$r/usr/bin/picket"
    printf '#!/bin/sh\necho "gateway daemon"\n' >"$r/usr/sbin/gatewayd"
    chmod 0755 "$r/usr/sbin/gatewayd"
    echo "listen = 8443" >"$r/etc/gatewayd.conf"
    echo "0123456789abcdef0123456789abcdef" >"$r/etc/machine-id"
    echo "run-time state" >"$r/var/lib/state"
    echo "not part of the image" >"$r/tmp/scratch"
    render_config "$recipe_dir/files/picket.toml.in" /etc /var >"$r/etc/picket/picket.toml"
    cp "$work/keys/vendor.pub" "$r/etc/picket/trust/vendor.pub"
}

scan_and_sign() {
    mkdir -p "$work/keys"
    "$PICKET" keygen --out "$work/keys/vendor" >/dev/null
    make_rootfs "$work/rootfs"
    SOURCE_DATE_EPOCH=1795000000 sh "$layer/scripts/picket-baseline-sign.sh" \
        --picket "$PICKET" --rootfs "$work/rootfs" --key "$work/keys/vendor.key" \
        --work "$work/baseline" --serial 42 --name yocto-check-image \
        --protected "/etc" --exclude "/var /home /etc/machine-id"
    local bundle=$work/rootfs/etc/picket/policy.bundle
    [ -f "$bundle" ] || fail "no bundle at /etc/picket/policy.bundle in the rootfs"
    "$PICKET" policy verify --trust "$work/keys" "$bundle"
    "$PICKET" policy show --trust "$work/keys" "$bundle" >"$work/shown.toml"
    local p
    for p in /usr/bin/true /usr/bin/picket /usr/sbin/gatewayd; do
        grep -qx "path = \"$p\"" "$work/shown.toml" || fail "$p is not in the signed baseline"
    done
    grep -qx 'path = "/etc/gatewayd.conf"' "$work/shown.toml" || fail "/etc/gatewayd.conf is not protected"
    grep -qx 'path = "/etc/picket/picket.toml"' "$work/shown.toml" || fail "picket.toml is not protected"
    # (The comment line `policy show` starts with names the bundle's file: skip it.)
    grep -v '^#' "$work/shown.toml" | grep -q "$work" &&
        fail "the baseline names build paths: $(grep -v '^#' "$work/shown.toml" | grep "$work")"
    grep -q 'machine-id\|/var/lib/state\|/tmp/scratch' "$work/shown.toml" &&
        fail "excluded paths are in the baseline"
    grep -qx 'device_class = "acme-gw"' "$work/shown.toml" || fail "device class not taken from picket.toml"
    grep -qx 'serial = 42' "$work/shown.toml" || fail "serial not 42"
    grep -qx 'created = "2026-11-18T11:06:40Z"' "$work/shown.toml" || fail "created does not follow SOURCE_DATE_EPOCH"
    # The draft kept for review is the signed policy.
    "$PICKET" policy sign --key "$work/keys/vendor.key" --in "$work/baseline/policy.toml" \
        --out "$work/resigned.bundle" >/dev/null
    cmp "$work/resigned.bundle" "$bundle"
}

sign_refusals() {
    # A key the image does not trust: the build must fail, and say so.
    mkdir -p "$work/other"
    "$PICKET" keygen --out "$work/other/other" >/dev/null
    make_rootfs "$work/rootfs-untrusted"
    if sh "$layer/scripts/picket-baseline-sign.sh" --picket "$PICKET" --rootfs "$work/rootfs-untrusted" \
        --key "$work/other/other.key" --work "$work/baseline-untrusted" 2>"$work/untrusted.err"; then
        fail "signing with an untrusted key succeeded"
    fi
    grep -q "has no public key for" "$work/untrusted.err" || fail "unclear refusal: $(cat "$work/untrusted.err")"
    [ ! -e "$work/rootfs-untrusted/etc/picket/policy.bundle" ] || fail "an untrusted bundle was installed"
    # An image without picket.
    mkdir -p "$work/empty-rootfs/usr/bin"
    if sh "$layer/scripts/picket-baseline-sign.sh" --picket "$PICKET" --rootfs "$work/empty-rootfs" \
        --key "$work/keys/vendor.key" --work "$work/baseline-empty" 2>"$work/empty.err"; then
        fail "an image without picket was signed"
    fi
    grep -q "add picket to IMAGE_INSTALL" "$work/empty.err" || fail "unclear refusal: $(cat "$work/empty.err")"
}

# This machine's architecture as Rust names it (target_arch), as build-ebpf-object.sh does.
host_arch() {
    case "$(uname -m)" in
    armv7* | armv6* | arm) echo arm ;;
    *) uname -m ;;
    esac
}

released_objects() {
    local built=$work/built/picket-sensors.bpf.o
    bash "$layer/scripts/build-ebpf-object.sh" --arch "$(host_arch)" --out-dir "$work/built" >"$work/object.out"
    grep -q '^PICKET_BPF_OBJECT_SHA256 = "[0-9a-f]\{64\}"$' "$work/object.out" ||
        fail "build-ebpf-object.sh printed no SHA-256: $(cat "$work/object.out")"
    grep -q "$(sha256sum "$built" | cut -d' ' -f1)" "$work/object.out" ||
        fail "the printed SHA-256 is not the object's"
    # The same bytes as the object the agent's build.rs embeds (the newest one built here).
    local embedded
    embedded=$(ls -t "$root"/target/debug/build/picket-agent-*/out/picket-sensors 2>/dev/null |
        while read -r f; do [ -s "$f" ] && echo "$f" && break; done)
    [ -n "$embedded" ] || fail "no embedded object under target/debug/build: build picket without AYA_BUILD_SKIP"
    cmp "$embedded" "$built" || fail "build-ebpf-object.sh and build.rs give different objects"
    # An ELF file for the BPF machine (e_machine 247).
    [ "$(od -An -tx1 -j0 -N4 "$built" | tr -d ' ')" = 7f454c46 ] || fail "picket-sensors.bpf.o is not an ELF file"
    [ "$(od -An -tu2 -j18 -N2 "$built" | tr -d ' ')" = 247 ] || fail "picket-sensors.bpf.o is not a BPF object"
    # The released objects: this machine's is the one just built; riscv64, which no other step
    # builds, is built here; aarch64 and arm are checked by scripts/cross.sh.
    local start=$SECONDS
    bash "$layer/scripts/release-ebpf-objects.sh" --check "$(host_arch)=$built" riscv64
    log "released eBPF objects checked ($((SECONDS - start)) s, riscv64 built)"
}

# The device: /etc and /var of the image under $work/device, the agent from $PICKET, the
# released eBPF object for this machine, as the recipe installs it.
prepare_device() {
    local d=$work/device
    mkdir -p "$d/etc/picket/trust" "$d/var/lib/picket" "$d/var/log/picket" "$d/lib/picket"
    render_config "$recipe_dir/files/picket.toml.in" "$d/etc" "$d/var" >"$d/etc/picket/picket.toml"
    cp "$work/rootfs/etc/picket/policy.bundle" "$d/etc/picket/policy.bundle"
    cp "$work/keys/vendor.pub" "$d/etc/picket/trust/"
    install -m 0644 "$recipe_dir/files/bpf/$(host_arch)/picket-sensors.bpf.o" "$d/lib/picket/picket-sensors.bpf.o"
}

# Waits up to $2 seconds for the regular expression $1 in the file $3.
wait_for() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        grep -q "$1" "$3" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

sandboxed_agent() {
    prepare_device
    local d=$work/device
    # systemd mounts tracefs for the unit (sys-kernel-tracing.mount).
    if ! grep -q ' tracefs ' /proc/mounts; then
        mount -t tracefs nodev /sys/kernel/tracing
    fi
    # The unit's capability bounding set, read from the unit itself.
    local caps
    caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$recipe_dir/files/picket.service")
    [ -n "$caps" ] || fail "no CapabilityBoundingSet in picket.service"
    local setpriv_caps="-all"
    for c in $caps; do
        setpriv_caps="$setpriv_caps,+$(echo "${c#CAP_}" | tr '[:upper:]' '[:lower:]')"
    done
    # ProtectSystem=strict with the state and log directories writable, ProtectKernelTunables
    # (read-only /sys, tracefs included, and /proc/sys; /proc/kallsyms inaccessible),
    # NoNewPrivileges, and the bounding set, in a mount namespace of the agent's own.
    local unknown_exe=$work/not-in-baseline
    cp /usr/bin/true "$unknown_exe"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private -- sh -c '
        set -e
        d=$1; shift
        for w in "$d/var/lib/picket" "$d/var/log/picket"; do mount --bind "$w" "$w"; done
        mount -o remount,bind,ro /
        mount -o remount,bind,ro /sys
        mount --bind /sys/kernel/tracing /sys/kernel/tracing
        mount -o remount,bind,ro /sys/kernel/tracing
        mount --bind /proc/sys /proc/sys
        mount -o remount,bind,ro /proc/sys
        mount --bind /dev/null /proc/kallsyms
        exec setpriv --bounding-set "$1" --inh-caps -all --no-new-privs -- "$2" run \
            --config "$d/etc/picket/picket.toml" --bpf-object "$d/lib/picket/picket-sensors.bpf.o"
    ' sandbox "$d" "$setpriv_caps" "$PICKET" >"$work/agent.out" 2>"$work/agent.err" &
    local agent_pid=$!
    # Each check runs in a subshell: stop the agent when it ends, whatever happened.
    # shellcheck disable=SC2064 # the pid is known now, and only now
    trap "kill $agent_pid 2>/dev/null || true" EXIT
    wait_for "running with policy" 60 "$work/agent.err" ||
        fail "the sandboxed agent did not start: $(cat "$work/agent.err")"
    grep -q "policy \`yocto-check-image\` serial 42 installed" "$work/agent.err" ||
        fail "the image's baseline was not installed: $(cat "$work/agent.err")"
    grep "running with policy" "$work/agent.err" >&2
    # Allowed by the baseline (same path and hash as in the image): no alert. Not allowed: one.
    /usr/bin/true
    "$unknown_exe"
    # The baseline's verdict, unknown_executable: the file is in /var/tmp, so a suspicious_exec
    # (temporary location) about it says nothing of the baseline.
    wait_for "\"alert\":\"unknown_executable\".*\"path\":\"$unknown_exe\"" 20 "$d/var/log/picket/alerts.jsonl" ||
        fail "no unknown_executable alert for $unknown_exe: $(tail -n 5 "$d/var/log/picket/alerts.jsonl" 2>&1)"
    if grep '"path":"/usr/bin/true"' "$d/var/log/picket/alerts.jsonl" | grep -q '"alert":"unknown_executable\|"alert":"modified_executable'; then
        fail "/usr/bin/true, in the baseline, raised an alert"
    fi
    # The agent ran with the unit's capabilities only (CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE,
    # CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF: bits 2, 19, 21, 38, 39).
    [ "$(readlink "/proc/$agent_pid/exe")" = "$PICKET" ] || fail "pid $agent_pid is not the agent"
    grep -q "^CapBnd:[[:space:]]*000000c000280004$" "/proc/$agent_pid/status" ||
        fail "the agent runs with $(grep CapBnd "/proc/$agent_pid/status"), not the unit's bounding set"
    kill -TERM "$agent_pid"
    wait "$agent_pid" || fail "the agent did not stop cleanly on SIGTERM: $(tail -n 5 "$work/agent.err")"
}

sysvinit_script() {
    local d=$work/device init=$work/picket.init
    sed -e "s|@BINDIR@|$(dirname "$PICKET")|g" -e "s|@LIBDIR@|$d/lib|g" \
        -e "s|@SYSCONFDIR@|$d/etc|g" -e "s|@LOCALSTATEDIR@|$d/var|g" \
        -e "s|^PIDFILE=.*|PIDFILE=$work/picket.pid|" "$recipe_dir/files/picket.init" >"$init"
    rm -f "$d/var/log/picket/picket.log"
    # shellcheck disable=SC2064 # $init is a local variable
    trap "sh '$init' stop >/dev/null 2>&1 || true" EXIT
    sh "$init" start
    wait_for "running with policy" 60 "$d/var/log/picket/picket.log" ||
        fail "the init script's agent did not start: $(cat "$d/var/log/picket/picket.log")"
    sh "$init" status | grep -q "picket is running" || fail "status does not report the agent"
    sh "$init" start | grep -q "already running" || fail "a second start did not see the first"
    local pid
    pid=$(cat "$work/picket.pid")
    sh "$init" stop
    # An agent that exited and is not yet reaped by whoever adopted it is a zombie, which
    # `kill -0` still finds: alive is a process whose executable is still the agent.
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$PICKET" ] && fail "the agent survived stop"
    if sh "$init" status; then fail "status reports a stopped agent as running"; fi
}

bitbake_parse() {
    bash "$root/scripts/bitbake-check.sh"
}

check lint
check sources_match
check unit_verifies
check scan_and_sign
check sign_refusals
check released_objects
check sandboxed_agent
check sysvinit_script
check bitbake_parse

log "layer checks: $passed passed, $failed failed"
echo "yocto: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
