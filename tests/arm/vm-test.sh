#!/usr/bin/env bash
# Boots Debian's kernels, Linux 6.1 (bookworm) and 5.10 (bullseye), for arm64, armhf (armmp) and
# amd64, under qemu-system with a small initramfs that holds the agent (on ARM the static musl
# `picket`; on x86_64 the host's release build with its libraries), a static busybox, a trust
# key, a signed baseline and a configuration. Inside, `picket run` must raise an
# `unknown_executable` alert for an exec of a copied binary in /tmp, a `protected_file_changed`
# alert for a write to a protected file, and `unexpected_listener` and `unexpected_connection`
# alerts for a TCP listener and a connection on loopback, each with the dry run's `would_block`;
# and nothing else. Then, with the same baseline enforcing executables and network, the copy must
# fail to run, the listener and the connection must be refused, each with its `blocked_*` alert,
# and after a SIGKILL of the agent all three must work again. Any step that does not work fails
# the test with the step and what the kernel or the agent said. Before all that, `picket
# kernel-check` must find every feature it knows of. Every kernel must pass the same assertions.
#
#   tests/arm/vm-test.sh [ARCH[@KERNEL] ...]   ARCH: aarch64, armv7 or x86_64; KERNEL: 6.1 or 5.10
#                                              (an ARCH alone: both kernels; none: all six VMs)
#
# Needs: the static ARM agents (scripts/cross.sh build), the host's release agent (cargo build
# --release -p picket-agent; PICKET_X86_64_AGENT names another), a `picket` to sign the baseline
# ($PICKET_HOST, else target/debug/picket, else the aarch64 agent under qemu-user),
# qemu-system-arm (provides qemu-system-aarch64 too), qemu-system-x86 (emulating: KVM is not
# needed), cpio and apt-get access to Debian's packages (kernels and busybox-static, downloaded
# once into target/arm-vm/debs). The 6.1 kernels come from the system's package lists
# (bookworm); the 5.10 ones from bullseye's, fetched once into a private apt directory
# (target/arm-vm/apt/bullseye) with its own sources list: the system's sources are not touched.
# No root needed, except to add the foreign architectures to dpkg the first time
# (scripts/cross.sh setup does that).
#
# Environment: PICKET_VM_TIMEOUT (seconds per VM, default 420), PICKET_VM_JOBS (VMs booted at
# once, default the number of CPUs), PICKET_HOST (host picket), PICKET_PROFILE (cargo profile of
# the ARM agents, default release-small), PICKET_BULLSEYE_MIRROR (default
# http://deb.debian.org/debian).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/../.."
ROOT=$PWD

log() { printf '\033[1m[arm-vm]\033[0m %s\n' "$*" >&2; }
err() { printf '\033[1;31m[arm-vm] FAIL\033[0m %s\n' "$*" >&2; }
fail() { err "$@"; exit 1; }

PROFILE="${PICKET_PROFILE:-release-small}"
TIMEOUT="${PICKET_VM_TIMEOUT:-420}"
JOBS="${PICKET_VM_JOBS:-$(nproc)}"
WORK="$ROOT/target/arm-vm"
DEBS="$WORK/debs"
# The picket that makes the key and signs the baseline: the host's, or else the aarch64 agent
# under qemu-user (key generation and signing do not need the kernel).
if [ -n "${PICKET_HOST:-}" ]; then
    HOST_PICKET=("$PICKET_HOST")
elif [ -x "$ROOT/target/debug/picket" ]; then
    HOST_PICKET=("$ROOT/target/debug/picket")
else
    HOST_PICKET=(qemu-aarch64-static "$ROOT/target/aarch64-unknown-linux-musl/$PROFILE/picket")
fi
# The Debian release's kernel ABI; `linux-image-arm64` / `linux-image-armmp` depend on it.
KERNEL_FLAVOUR_arm64=arm64
KERNEL_FLAVOUR_armhf=armmp
KERNELS=(6.1 5.10)
BULLSEYE="$WORK/apt/bullseye"
BULLSEYE_MIRROR="${PICKET_BULLSEYE_MIRROR:-http://deb.debian.org/debian}"

"${HOST_PICKET[@]}" --version >/dev/null 2>&1 ||
    fail "no picket to sign the baseline (${HOST_PICKET[*]}): build one (cargo build -p picket-agent) or set PICKET_HOST"
for tool in cpio apt-get dpkg-deb file; do
    command -v "$tool" >/dev/null || fail "$tool is missing (scripts/cross.sh setup installs it)"
done

# apt's options for the package lists of a kernel release: the system's for 6.1, a private
# directory with bullseye's for 5.10 (its lists fetched once, then reused).
apt_options() {
    case "$1" in
        6.1) APT_OPTS=() ;;
        5.10)
            APT_OPTS=(-o "Dir::Etc::sourcelist=$BULLSEYE/sources.list" -o "Dir::Etc::sourceparts=-"
                -o "Dir::State::Lists=$BULLSEYE/lists" -o "Dir::Cache=$BULLSEYE/cache")
            if [ ! -e "$BULLSEYE/lists/.done" ]; then
                rm -rf "$BULLSEYE" && mkdir -p "$BULLSEYE/lists/partial" "$BULLSEYE/cache/archives/partial"
                printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s bullseye main\n' \
                    "$BULLSEYE_MIRROR" >"$BULLSEYE/sources.list"
                log "fetching bullseye's package lists into ${BULLSEYE#"$ROOT"/}"
                apt-get "${APT_OPTS[@]}" update -qq >"$BULLSEYE/update.log" 2>&1 ||
                    fail "apt-get update of bullseye's lists: $(tail -n 3 "$BULLSEYE/update.log")"
                touch "$BULLSEYE/lists/.done"
            fi
            ;;
        *) fail "unknown kernel $1 (one of: ${KERNELS[*]})" ;;
    esac
}

# The package a metapackage points at, e.g. linux-image-arm64:arm64 -> linux-image-6.1.0-50-arm64,
# in the package lists of APT_OPTS.
resolve_kernel() {
    local meta=$1 arch=$2
    apt-cache "${APT_OPTS[@]}" depends "$meta:$arch" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { sub(/:.*/, "", $2); print $2; exit }'
}

# Downloads a Debian package for `arch` once, from the package lists of APT_OPTS; prints the
# path of the .deb.
fetch_deb() {
    local pkg=$1 arch=$2 found
    mkdir -p "$DEBS"
    found=$(find "$DEBS" -maxdepth 1 -name "${pkg}_*_${arch}.deb" | sort | tail -n 1)
    if [ -z "$found" ]; then
        log "downloading $pkg:$arch"
        (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download -q "$pkg:$arch" >/dev/null 2>"$DEBS/download.err") ||
            fail "apt-get download $pkg:$arch: $(tail -n 3 "$DEBS/download.err") (run scripts/cross.sh setup: it adds the arm64/armhf architectures and runs apt-get update)"
        found=$(find "$DEBS" -maxdepth 1 -name "${pkg}_*_${arch}.deb" | sort | tail -n 1)
    fi
    [ -n "$found" ] || fail "downloaded $pkg:$arch but no .deb in $DEBS"
    printf '%s\n' "$found"
}

# Extracts the members given (e.g. ./boot) of a .deb once; prints the directory.
extract_deb() {
    local deb=$1 dir
    shift
    dir="$WORK/x/$(basename "$deb" .deb)"
    if [ ! -e "$dir/.done" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" "$@" || fail "extracting $* from $deb"
        touch "$dir/.done"
    fi
    printf '%s\n' "$dir"
}

# Checks the kernel configuration for what the sensors need, and for the serial console
# `serial`.
check_kernel_config() {
    local config=$1 serial=$2 option value missing=()
    for option in CONFIG_BPF_SYSCALL CONFIG_BPF_EVENTS CONFIG_TRACEPOINTS CONFIG_FTRACE_SYSCALLS \
        "$serial" CONFIG_BLK_DEV_INITRD CONFIG_DEVTMPFS; do
        value=$(grep -E "^$option=" "$config" | cut -d= -f2 || true)
        [ "$value" = y ] || missing+=("$option=${value:-unset}")
    done
    [ ${#missing[@]} -eq 0 ] || { err "$(basename "$config"): built-in options missing: ${missing[*]}"; return 1; }
}

# The init script of the test VM: everything it prints goes to the serial console.
write_init() {
    cat >"$1" <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
step() { echo "PICKET-VM-STEP: $*"; }
die() {
    echo "PICKET-VM-FAIL: $*"
    echo "--- agent log (last 40 lines)"; tail -n 40 /var/log/picket/agent.log 2>/dev/null
    echo "--- kernel log (last 20 lines)"; dmesg | tail -n 20
    poweroff -f
}
mount -t proc proc /proc || die "mount proc"
mount -t sysfs sysfs /sys || die "mount sysfs"
mount -t tmpfs tmpfs /tmp || die "mount tmpfs on /tmp"
mount -t debugfs debugfs /sys/kernel/debug || die "mount debugfs"
mount -t tracefs tracefs /sys/kernel/tracing || die "mount tracefs: $(dmesg | tail -n 3)"
step "kernel $(uname -r) $(uname -m), up $(cut -d' ' -f1 /proc/uptime) s"
[ -d /sys/kernel/tracing/events/syscalls ] || die "no syscall tracepoints in tracefs (CONFIG_FTRACE_SYSCALLS)"
# arm64 has only the *at() forms of the file syscalls; 32-bit ARM has the legacy ones too.
legacy=""
for call in open creat rename unlink rmdir mkdir link symlink chmod chown lchown; do
    [ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$call" ] || legacy="$legacy $call"
done
step "$(ls /sys/kernel/tracing/events/syscalls | wc -l) syscall tracepoints; legacy file syscalls absent:${legacy:- none}"
# Newer syscalls whose programs the agent skips on kernels without them.
newer=""
for call in clone3 openat2 mount_setattr fchmodat2 setxattrat; do
    [ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$call" ] || newer="$newer $call"
done
step "newer syscalls absent:${newer:- none}"

# What the agent's own check says of this kernel: Debian's kernels have every feature, required
# (status 0) and optional, but for the BPF JIT on 32-bit ARM: built, and off by default there
# (net.core.bpf_jit_enable is 0; the kernel interprets the programs).
step "picket kernel-check"
status=0
picket kernel-check >/tmp/kernel-check.txt 2>&1 || status=$?
while read -r line; do echo "PICKET-KERNEL-CHECK: $line"; done </tmp/kernel-check.txt
[ "$status" -eq 0 ] || die "picket kernel-check exited with status $status"
# Only there may the JIT be off: elsewhere its line counts as missing like any other.
jit_off='^$'
if [ "$(uname -m)" = armv7l ]; then
    jit_off='^missing +optional +BPF JIT: /proc/sys/net/core/bpf_jit_enable is 0'
    grep -qE "$jit_off" /tmp/kernel-check.txt || die "picket kernel-check did not find the BPF JIT off"
fi
! grep -E '^(missing|unknown) ' /tmp/kernel-check.txt | grep -vE "$jit_off" ||
    die "picket kernel-check found features missing"

mkdir -p /var/log/picket /var/lib/picket
step "starting picket run"
picket run --config /etc/picket/picket.toml >/var/log/picket/stdout.jsonl 2>/var/log/picket/agent.log &
agent=$!
i=0
until grep -q 'running with policy' /var/log/picket/agent.log 2>/dev/null; do
    kill -0 "$agent" 2>/dev/null || die "picket run exited before loading the sensors"
    i=$((i + 1))
    [ "$i" -le 600 ] || die "picket run did not load its sensors within 300 s"
    sleep 0.5
done
step "sensors loaded after $(cut -d' ' -f1 /proc/uptime) s of uptime"
cat /var/log/picket/agent.log

# A copy of busybox (which picks its applet by the name it is run as) that no policy lists.
step "exec of an unknown binary: /tmp/unknown/echo"
mkdir -p /tmp/unknown && cp /bin/busybox /tmp/unknown/echo
[ "$(/tmp/unknown/echo ran)" = ran ] || die "could not run /tmp/unknown/echo"
step "write to the protected file /etc/app/app.conf"
echo "tampered" >>/etc/app/app.conf || die "could not write /etc/app/app.conf"
step "a TCP listener on port 7777 and a connection to it, on loopback"
ip link set lo up || die "ip link set lo up"
nc -l -p 7777 </dev/null >/dev/null &
i=0
until netstat -tln | grep -q ':7777 '; do
    i=$((i + 1))
    [ "$i" -le 40 ] || die "nc did not listen on port 7777"
    sleep 0.25
done
echo hello | nc 127.0.0.1 7777 || die "could not connect to 127.0.0.1:7777"

i=0
until grep -q '"alert":"unknown_executable".*"path":"/tmp/unknown/echo"' /var/log/picket/alerts.jsonl 2>/dev/null &&
    grep -q '"alert":"protected_file_changed".*"path":"/etc/app/app.conf"' /var/log/picket/alerts.jsonl 2>/dev/null &&
    grep -q '"alert":"unexpected_listener".*"port":7777' /var/log/picket/alerts.jsonl 2>/dev/null &&
    grep -q '"alert":"unexpected_connection".*"remote_port":7777' /var/log/picket/alerts.jsonl 2>/dev/null &&
    grep -q '"alert":"would_block".*"path":"/tmp/unknown/echo"' /var/log/picket/alerts.jsonl 2>/dev/null &&
    grep -q '"alert":"would_block".*"port":7777' /var/log/picket/alerts.jsonl 2>/dev/null &&
    grep -q '"alert":"would_block".*"remote_port":7777' /var/log/picket/alerts.jsonl 2>/dev/null; do
    kill -0 "$agent" 2>/dev/null || die "picket run exited while waiting for the alerts"
    i=$((i + 1))
    [ "$i" -le 120 ] || break
    sleep 0.5
done
step "alerts seen after $(cut -d' ' -f1 /proc/uptime) s of uptime; stopping picket"
kill "$(pidof nc)" 2>/dev/null
kill -TERM "$agent"
status=0
wait "$agent" || status=$?
echo "PICKET-VM-AGENT-EXIT: $status"
step "agent stopped after $(cut -d' ' -f1 /proc/uptime) s of uptime; every alert it raised:"
while read -r line; do echo "PICKET-ALERT: $line"; done </var/log/picket/alerts.jsonl
echo "--- agent log"; cat /var/log/picket/agent.log

# The same baseline, enforcing executables and network (serial 2).
step "enforce: picket run with the enforcing baseline"
sed 's|/etc/picket/policy.bundle|/etc/picket/enforce.bundle|; s|/var/log/picket/alerts.jsonl|/var/log/picket/enforce.jsonl|' \
    /etc/picket/picket.toml >/etc/picket/enforce.toml
picket run --config /etc/picket/enforce.toml >/dev/null 2>/var/log/picket/enforce.log &
agent=$!
i=0
until grep -q 'network: guard in force (enforce' /var/log/picket/enforce.log 2>/dev/null &&
    grep -q 'executables: guard started (enforce)' /var/log/picket/enforce.log 2>/dev/null; do
    kill -0 "$agent" 2>/dev/null || { cat /var/log/picket/enforce.log; die "the enforcing picket run exited"; }
    i=$((i + 1))
    [ "$i" -le 600 ] || { cat /var/log/picket/enforce.log; die "the guards did not start within 300 s"; }
    sleep 0.5
done
# Each refusal must be EPERM ("Operation not permitted"), not any other failure.
out=$(/tmp/unknown/echo ran 2>&1) && die "enforce: /tmp/unknown/echo ran"
echo "$out" | grep -qi 'not permitted' || die "enforce: /tmp/unknown/echo failed otherwise: $out"
[ "$(/bin/busybox echo allowed)" = allowed ] || die "enforce: the baselined busybox did not run"
out=$(nc -l -p 7778 </dev/null 2>&1 >/dev/null) && die "enforce: nc listened on port 7778"
echo "$out" | grep -qi 'not permitted' || die "enforce: the listener failed otherwise: $out"
out=$(echo hello | nc 127.0.0.1 7777 2>&1) && die "enforce: a connection to 127.0.0.1:7777 went through"
echo "$out" | grep -qi 'not permitted' || die "enforce: the connection failed otherwise: $out"
i=0
until grep -q '"alert":"blocked_exec".*"path":"/tmp/unknown/echo"' /var/log/picket/enforce.jsonl 2>/dev/null &&
    grep -q '"alert":"blocked_listener".*"port":7778' /var/log/picket/enforce.jsonl 2>/dev/null &&
    grep -q '"alert":"blocked_connection".*"remote_port":7777' /var/log/picket/enforce.jsonl 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 60 ] || break
    sleep 0.5
done
step "enforce: SIGKILL of the agent, then everything runs and connects again"
kill -KILL "$agent"
wait "$agent" 2>/dev/null
[ "$(/tmp/unknown/echo ran)" = ran ] || die "after SIGKILL: /tmp/unknown/echo still refused"
nc -l -p 7778 </dev/null >/dev/null &
i=0
until netstat -tln | grep -q ':7778 '; do
    i=$((i + 1))
    [ "$i" -le 40 ] || die "after SIGKILL: nc could not listen on port 7778"
    sleep 0.25
done
echo hello | nc 127.0.0.1 7778 || die "after SIGKILL: could not connect to 127.0.0.1:7778"
echo "PICKET-VM-ENFORCE: after SIGKILL, runs and connects"
while read -r line; do echo "PICKET-ENFORCE-ALERT: $line"; done </var/log/picket/enforce.jsonl
echo "--- enforcing agent log"; cat /var/log/picket/enforce.log
step "done"
poweroff -f
INIT
    chmod 755 "$1"
}

# Builds the initramfs of one VM in `dir`; prints its path.
build_initramfs() {
    local dir=$1 agent=$2 busybox_deb=$3 stage keys bb
    stage="$dir/rootfs"
    keys="$dir/keys"
    rm -rf "$stage" "$keys" && mkdir -p "$stage"/{bin,etc/app,etc/picket/trust,var/lib/picket,var/log/picket} "$keys"
    bb=$(extract_deb "$busybox_deb" ./bin/busybox) || exit 1
    cp "$bb/bin/busybox" "$stage/bin/busybox" || fail "no bin/busybox in $busybox_deb"
    cp "$agent" "$stage/bin/picket" || exit 1
    # A dynamically linked agent (the host's, in the x86_64 VM) brings its libraries and loader.
    if ! file -b "$agent" | grep -q 'statically linked'; then
        local lib
        for lib in $(ldd "$agent" | grep -o '/[^ ]*'); do
            mkdir -p "$stage$(dirname "$lib")" && cp -L "$lib" "$stage$lib" || fail "copying $lib into the initramfs"
        done
    fi
    write_init "$stage/init"
    printf 'setting = "original"\n' >"$stage/etc/app/app.conf"
    cat >"$stage/etc/picket/picket.toml" <<'EOF'
device_id = "vm-0001"
device_class = "picket-arm-vm"
policy = "/etc/picket/policy.bundle"
trust_dir = "/etc/picket/trust"
state_dir = "/var/lib/picket"

[alerts]
window = "60s"

[output]
stdout = false
file = "/var/log/picket/alerts.jsonl"
EOF
    cat >"$dir/scan.toml" <<'EOF'
protected = ["/etc/app"]
exclude = ["/etc/picket", "/var"]

[metadata]
name = "arm-vm"
device_class = "picket-arm-vm"
serial = 1
EOF
    "${HOST_PICKET[@]}" keygen --out "$keys/vm" >/dev/null 2>&1 || fail "picket keygen failed"
    cp "$keys/vm.pub" "$stage/etc/picket/trust/" || exit 1
    "${HOST_PICKET[@]}" baseline scan --root "$stage" --config "$dir/scan.toml" --out "$dir/policy.toml" 2>"$dir/scan.log" ||
        fail "picket baseline scan: $(tail -n 5 "$dir/scan.log")"
    # The image's files belong to root in the cpio (--owner 0:0): record them that way.
    if [ "$(id -u)" -ne 0 ]; then
        sed -i -E 's/^(owner|group) = [0-9]+$/\1 = 0/' "$dir/policy.toml"
    fi
    "${HOST_PICKET[@]}" policy sign --key "$keys/vm.key" --in "$dir/policy.toml" \
        --out "$stage/etc/picket/policy.bundle" >/dev/null 2>"$dir/sign.log" || fail "picket policy sign: $(cat "$dir/sign.log")"
    # The same baseline, enforcing executables and network: serial 2.
    sed -e 's/^serial = 1$/serial = 2/' -e 's/^executables = "alert"$/executables = "enforce"/' \
        -e 's/^network = "alert"$/network = "enforce"/' "$dir/policy.toml" >"$dir/enforce.toml"
    grep -q '^executables = "enforce"' "$dir/enforce.toml" && grep -q '^network = "enforce"' "$dir/enforce.toml" ||
        fail "the scanned policy has no [modes] table to make enforcing"
    "${HOST_PICKET[@]}" policy sign --key "$keys/vm.key" --in "$dir/enforce.toml" \
        --out "$stage/etc/picket/enforce.bundle" >/dev/null 2>"$dir/sign.log" || fail "picket policy sign (enforce): $(cat "$dir/sign.log")"
    grep -q '"/etc/app/app.conf"' "$dir/policy.toml" || fail "the baseline does not protect /etc/app/app.conf"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner 0:0) | gzip -1 >"$dir/initramfs.cpio.gz" ||
        fail "building the initramfs with cpio"
    printf '%s\n' "$dir/initramfs.cpio.gz"
}

# Sets, for the architecture `arch`: agent (its path), debarch (Debian's), meta (the kernel
# metapackage), qemu (its command), tty (the serial console) and serial (its kernel option).
arch_settings() {
    tty=ttyAMA0 serial=CONFIG_SERIAL_AMBA_PL011_CONSOLE
    case "$1" in
        aarch64)
            agent="$ROOT/target/aarch64-unknown-linux-musl/$PROFILE/picket" debarch=arm64
            meta=linux-image-$KERNEL_FLAVOUR_arm64
            qemu=(qemu-system-aarch64 -M virt -cpu cortex-a57)
            ;;
        armv7)
            agent="$ROOT/target/armv7-unknown-linux-musleabihf/$PROFILE/picket" debarch=armhf
            meta=linux-image-$KERNEL_FLAVOUR_armhf
            qemu=(qemu-system-arm -M "virt,highmem=off" -cpu cortex-a15)
            ;;
        x86_64)
            # The host's own agent (glibc): KVM may be missing, so qemu emulates (TCG).
            agent="${PICKET_X86_64_AGENT:-$ROOT/target/release/picket}" debarch=amd64 meta=linux-image-amd64
            qemu=(qemu-system-x86_64 -accel tcg)
            tty=ttyS0 serial=CONFIG_SERIAL_8250_CONSOLE
            ;;
        *) err "unknown architecture $1 (aarch64, armv7 or x86_64)"; return 1 ;;
    esac
}

# Prepares the VM `arch@kernel` in $WORK/<arch>-<kernel>: its kernel (downloaded and extracted
# once), checked, and its initramfs. Returns non-zero on failure.
prepare_vm() {
    local arch=$1 release=$2 agent debarch meta qemu tty serial kpkg kdeb kdir kernel config initrd
    local name="$arch@$release" dir="$WORK/$arch-$release"
    arch_settings "$arch" || return 1
    command -v "${qemu[0]}" >/dev/null || { err "${qemu[0]} is missing (scripts/cross.sh setup installs it)"; return 1; }
    case "$arch" in
        x86_64)
            [ -x "$agent" ] || { err "$arch: no agent at $agent (cargo build --release -p picket-agent)"; return 1; }
            file -b "$agent" | grep -q 'x86-64' || { err "$arch: $agent is not an x86_64 program: $(file -b "$agent")"; return 1; }
            ;;
        *)
            [ -x "$agent" ] || { err "$arch: no agent at $agent (scripts/cross.sh build)"; return 1; }
            file -b "$agent" | grep -q 'statically linked' || { err "$arch: $agent is not statically linked: $(file -b "$agent")"; return 1; }
            ;;
    esac

    apt_options "$release"
    kpkg=$(resolve_kernel "$meta" "$debarch") || true
    [ -n "$kpkg" ] || { err "$name: apt-cache knows no $meta:$debarch (scripts/cross.sh setup adds the $debarch architecture)"; return 1; }
    # The system's lists must be bookworm's for 6.1: another release's kernel is not this VM's.
    case "$kpkg" in
        "linux-image-$release".[0-9]*) ;;
        *) err "$name: $meta:$debarch is $kpkg here, not Linux $release"; return 1 ;;
    esac
    kdeb=$(fetch_deb "$kpkg" "$debarch") || return 1
    kdir=$(extract_deb "$kdeb" ./boot) || return 1
    kernel=$(find "$kdir/boot" -name 'vmlinuz-*' | head -n 1)
    config=$(find "$kdir/boot" -name 'config-*' | head -n 1)
    if [ -z "$kernel" ] || [ -z "$config" ]; then
        err "$name: no vmlinuz or config in $kdeb"
        return 1
    fi
    check_kernel_config "$config" "$serial" || return 1
    # The same userland on both kernels: bookworm's busybox.
    local bbdeb
    APT_OPTS=()
    bbdeb=$(fetch_deb busybox-static "$debarch") || return 1
    mkdir -p "$dir"
    initrd=$(build_initramfs "$dir" "$agent" "$bbdeb") || return 1
    printf '%s\n' "$kpkg" >"$dir/kernel-package"
    ln -sf "$kernel" "$dir/vmlinuz"
}

# Boots the VM prepared in $WORK/<arch>-<kernel> and checks the console. Returns non-zero on
# failure.
run_vm() {
    local arch=$1 release=$2 agent debarch meta qemu tty serial kpkg kernel initrd console started status
    local name="$arch@$release" dir="$WORK/$arch-$release"
    arch_settings "$arch" || return 1
    kpkg=$(cat "$dir/kernel-package")
    kernel="$dir/vmlinuz" initrd="$dir/initramfs.cpio.gz"
    console="$dir/console.log"
    log "$name: booting $(basename "$(readlink "$kernel")") ($kpkg) with $(du -k "$initrd" | cut -f1) KiB of initramfs; console in ${console#"$ROOT"/}"
    started=$(date +%s%N)
    status=0
    timeout --foreground -k 10 "$TIMEOUT" "${qemu[@]}" -m 512 -smp 1 -nographic -no-reboot -nic none \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=$tty rdinit=/init panic=-1 loglevel=4" \
        </dev/null >"$console" 2>&1 || status=$?
    local elapsed
    elapsed=$(awk -v a="$started" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    tr -d '\r' <"$console" >"$console.txt"
    grep -E '^PICKET-VM-(STEP|FAIL)' "$console.txt" | sed "s/^/  $name: /" >&2 || true
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        log "$name: the VM did not finish within $TIMEOUT s; last console lines:"
        tail -n 30 "$console.txt" >&2
        return 1
    fi
    if grep -q '^PICKET-VM-FAIL' "$console.txt"; then
        log "$name: failed in the VM (after ${elapsed} s); console excerpt:"
        sed -n '/^PICKET-VM-FAIL/,$p' "$console.txt" | head -n 80 >&2
        return 1
    fi
    if ! grep -q '^PICKET-VM-STEP: done' "$console.txt"; then
        log "$name: the VM stopped before the test finished (qemu status $status); last console lines:"
        tail -n 40 "$console.txt" >&2
        return 1
    fi
    local ok=0
    grep -q '^PICKET-ALERT: .*"alert":"unknown_executable".*"path":"/tmp/unknown/echo"' "$console.txt" ||
        { log "$name: no unknown_executable alert for /tmp/unknown/echo"; ok=1; }
    grep -q '^PICKET-ALERT: .*"alert":"protected_file_changed".*"path":"/etc/app/app.conf"' "$console.txt" ||
        { log "$name: no protected_file_changed alert for /etc/app/app.conf"; ok=1; }
    grep -q '^PICKET-ALERT: .*"alert":"unexpected_listener".*"port":7777' "$console.txt" ||
        { log "$name: no unexpected_listener alert for port 7777"; ok=1; }
    grep -q '^PICKET-ALERT: .*"alert":"unexpected_connection".*"remote_addr":"127.0.0.1","remote_port":7777' "$console.txt" ||
        { log "$name: no unexpected_connection alert for 127.0.0.1:7777"; ok=1; }
    # The dry run of alert mode: what enforce would refuse.
    grep -q '^PICKET-ALERT: .*"alert":"would_block".*"path":"/tmp/unknown/echo"' "$console.txt" ||
        { log "$name: no would_block alert for /tmp/unknown/echo"; ok=1; }
    grep -q '^PICKET-ALERT: .*"alert":"would_block".*"port":7777' "$console.txt" ||
        { log "$name: no would_block alert for the bind of port 7777"; ok=1; }
    grep -q '^PICKET-ALERT: .*"alert":"would_block".*"remote_port":7777' "$console.txt" ||
        { log "$name: no would_block alert for the connection to port 7777"; ok=1; }
    # Enforcing: refused, reported, and nothing refused after a SIGKILL of the agent.
    grep -q '^PICKET-ENFORCE-ALERT: .*"alert":"blocked_exec".*"path":"/tmp/unknown/echo"' "$console.txt" ||
        { log "$name: no blocked_exec alert for /tmp/unknown/echo"; ok=1; }
    grep -q '^PICKET-ENFORCE-ALERT: .*"alert":"blocked_listener".*"port":7778' "$console.txt" ||
        { log "$name: no blocked_listener alert for port 7778"; ok=1; }
    grep -q '^PICKET-ENFORCE-ALERT: .*"alert":"blocked_connection".*"remote_port":7777' "$console.txt" ||
        { log "$name: no blocked_connection alert for 127.0.0.1:7777"; ok=1; }
    grep -q '^PICKET-VM-ENFORCE: after SIGKILL, runs and connects' "$console.txt" ||
        { log "$name: the enforcing phase did not finish"; ok=1; }
    # Nothing else may raise an alert: the rest of the system is in the baseline. The copy in
    # /tmp is also a suspicious exec (a temporary location).
    local unexpected
    unexpected=$(grep '^PICKET-ALERT: ' "$console.txt" |
        grep -v -e '"alert":"unknown_executable".*"path":"/tmp/unknown/echo"' \
            -e '"alert":"suspicious_exec".*"path":"/tmp/unknown/echo"' \
            -e '"alert":"protected_file_changed".*"path":"/etc/app/app.conf"' \
            -e '"alert":"unexpected_listener".*"port":7777' \
            -e '"alert":"unexpected_connection".*"remote_port":7777' \
            -e '"alert":"would_block".*"path":"/tmp/unknown/echo"' \
            -e '"alert":"would_block".*"port":7777' \
            -e '"alert":"would_block".*"remote_port":7777' || true)
    [ -z "$unexpected" ] || { log "$name: unexpected alerts:"; printf '%s\n' "$unexpected" >&2; ok=1; }
    grep -q '^PICKET-VM-AGENT-EXIT: 0' "$console.txt" ||
        { log "$name: picket run did not exit cleanly on SIGTERM: $(grep '^PICKET-VM-AGENT-EXIT' "$console.txt")"; ok=1; }
    if [ "$ok" -ne 0 ]; then
        log "$name: alerts and agent log from the VM:"
        sed -n '/sensors loaded/,$p' "$console.txt" | cut -c 1-400 | head -n 80 >&2
        return 1
    fi
    local loaded
    loaded=$(sed -n 's/^PICKET-VM-STEP: sensors loaded after \([0-9.]*\) s.*/\1/p' "$console.txt")
    log "$name: PASS ($(grep -c '^PICKET-ALERT' "$console.txt") alerts; sensors loaded at ${loaded} s of guest uptime; VM run ${elapsed} s)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$arch" "$release" "$kpkg" "$loaded" "$elapsed" >"$dir/result.tsv"
}

# The VMs asked for: ARCH@KERNEL, or ARCH for both kernels; none for every one.
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(aarch64 armv7 x86_64)
vms=()
for arg in "${args[@]}"; do
    case "$arg" in
        *@*) vms+=("$arg") ;;
        *) for release in "${KERNELS[@]}"; do vms+=("$arg@$release"); done ;;
    esac
done
mkdir -p "$WORK"
# One run at a time in $WORK: another would rebuild the initramfs and overwrite the consoles of
# this one's VMs.
exec 9>"$WORK/.lock"
if ! flock -n 9; then
    log "another VM test runs in ${WORK#"$ROOT"/}: waiting for it"
    flock 9
fi
printf 'arch\tkernel\tpackage\tsensors_loaded_s\tvm_run_s\n' >"$WORK/results.tsv"
failed=()
ready=()
# Downloads and initramfs one after the other (they share the package lists and caches).
for vm in "${vms[@]}"; do
    arch=${vm%@*} release=${vm#*@}
    rm -f "$WORK/$arch-$release/result.tsv"
    if prepare_vm "$arch" "$release"; then
        ready+=("$vm")
    else
        failed+=("$vm")
    fi
done
# The boots, up to $JOBS at once (each VM has one CPU); each one's report printed when it ends.
[ "$JOBS" -ge 1 ] 2>/dev/null || fail "PICKET_VM_JOBS must be a positive number, not $JOBS"
started=$(date +%s)
pending=("${ready[@]}")
running=()
report() {
    local vm=$1 arch=${1%@*} release=${1#*@}
    cat "$WORK/$arch-$release/test.log" >&2
    [ -s "$WORK/$arch-$release/result.tsv" ] || failed+=("$vm")
}
while [ ${#pending[@]} -gt 0 ] || [ ${#running[@]} -gt 0 ]; do
    while [ ${#pending[@]} -gt 0 ] && [ ${#running[@]} -lt "$JOBS" ]; do
        vm=${pending[0]}
        pending=("${pending[@]:1}")
        arch=${vm%@*} release=${vm#*@}
        (run_vm "$arch" "$release") >"$WORK/$arch-$release/test.log" 2>&1 &
        running+=("$vm:$!")
    done
    wait -n || true
    still=()
    for job in "${running[@]}"; do
        if kill -0 "${job##*:}" 2>/dev/null; then
            still+=("$job")
        else
            wait "${job##*:}" || true
            report "${job%:*}"
        fi
    done
    running=("${still[@]}")
done
for vm in "${vms[@]}"; do
    arch=${vm%@*} release=${vm#*@}
    cat "$WORK/$arch-$release/result.tsv" >>"$WORK/results.tsv" 2>/dev/null || true
done
log "VMs booted in $(($(date +%s) - started)) s, up to $JOBS at once"
if [ ${#failed[@]} -gt 0 ]; then
    fail "VM test failed on: ${failed[*]}"
fi
log "VM tests passed: ${vms[*]}"
