#!/usr/bin/env bash
# Installs what building and testing Picket needs on a Debian bookworm host, skipping whatever
# is already there: LLVM 22 and bpf-linker (links the eBPF object), the Rust toolchain that
# compiles the eBPF crate, and Mosquitto (the MQTT tests). Idempotent: run it as often as you
# like.
#
# The eBPF crate is compiled by a pinned toolchain (PICKET_EBPF_TOOLCHAIN, default 1.95.0) whose
# LLVM major version matches the LLVM bpf-linker is built against: bitcode from a newer LLVM
# is unreadable by an older one ("Invalid record").
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

need_apt=()
dpkg -s llvm-22-dev >/dev/null 2>&1 || need_apt+=(llvm-22-dev)
dpkg -s libpolly-22-dev >/dev/null 2>&1 || need_apt+=(libpolly-22-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The local fleet (scripts/run.sh) and the benchmarks make their certificates with it; bench/
# also takes it as the SHA-256 reference.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The backend's tests start a throwaway PostgreSQL server (the backend's PostgreSQL store).
dpkg -s postgresql >/dev/null 2>&1 || need_apt+=(postgresql)
# scripts/backend-unit-check.sh: the backend's unit (systemd-analyze, systemd-sysusers) and the
# system calls of the backend run in its sandbox.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq || log "apt-get update reported errors; installing anyway"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# The fleet console's tests drive Debian's headless Chromium through its WebDriver. Without the
# packages it recommends: desktop services (udev, upower, printing, notifications) a test machine
# does not want running.
need_browser=()
dpkg -s chromium >/dev/null 2>&1 || need_browser+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || need_browser+=(chromium-driver)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need_browser+=(fonts-dejavu-core)
if [ ${#need_browser[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_browser[*]}"
    $SUDO apt-get update -qq || log "apt-get update reported errors; installing anyway"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need_browser[@]}"
fi

# Mosquitto: the MQTT broker of the local fleet and of the end-to-end tests, which start their
# own instances on their own ports. The package enables a system service; none must run.
need_mqtt=()
dpkg -s mosquitto >/dev/null 2>&1 || need_mqtt+=(mosquitto)
dpkg -s mosquitto-clients >/dev/null 2>&1 || need_mqtt+=(mosquitto-clients)
if [ ${#need_mqtt[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_mqtt[*]}"
    # A stale list of another architecture must not stop the install: apt-get install says
    # precisely what is missing if it matters.
    $SUDO apt-get update -qq || log "apt-get update reported errors; installing anyway"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_mqtt[@]}"
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/mosquitto ]; then
        # Stops only the service's own process (its pid file), not the tests' brokers.
        [ ! -f /run/mosquitto/mosquitto.pid ] || $SUDO /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
        $SUDO update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
fi

# rsyslog: the syslog server the backend's integration tests deliver to (over TCP, and TLS with
# its GnuTLS driver); they start their own rsyslogd on their own ports. The package enables a
# system service; none must run.
need_syslog=()
dpkg -s rsyslog >/dev/null 2>&1 || need_syslog+=(rsyslog)
dpkg -s rsyslog-gnutls >/dev/null 2>&1 || need_syslog+=(rsyslog-gnutls)
if [ ${#need_syslog[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_syslog[*]}"
    $SUDO apt-get update -qq || log "apt-get update reported errors; installing anyway"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need_syslog[@]}"
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now rsyslog.service syslog.socket >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/rsyslog ]; then
        # Stops only the service's own process (its pid file), not the tests' servers.
        [ ! -f /run/rsyslogd.pid ] || $SUDO /etc/init.d/rsyslog stop >/dev/null 2>&1 || true
        $SUDO update-rc.d rsyslog disable >/dev/null 2>&1 || true
    fi
fi

if ! command -v rustup >/dev/null 2>&1; then
    log "rustup is missing: install Rust from https://rustup.rs first"
    exit 1
fi

EBPF_TOOLCHAIN="${PICKET_EBPF_TOOLCHAIN:-1.95.0}"
if ! rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src'; then
    log "installing Rust $EBPF_TOOLCHAIN with rust-src (compiles the eBPF crate)"
    rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal --component rust-src,clippy
fi
for component in rustfmt clippy; do
    rustup component list --installed | grep -q "^$component" || rustup component add "$component"
    rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed | grep -q "^$component" ||
        rustup component add --toolchain "$EBPF_TOOLCHAIN" "$component"
done

# Pinned: bpf-linker generates the eBPF code, and the Yocto layer's released objects are what
# this version builds (yocto-layer/meta-picket/README.md, "The eBPF object").
if ! bpf-linker --version 2>/dev/null | grep -qx 'bpf-linker 0.13.0'; then
    log "installing bpf-linker 0.13.0 (built against LLVM 22; takes a few minutes once)"
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked --force bpf-linker --version 0.13.0 --no-default-features --features llvm-22
fi

# Fuzzing (cargo fuzz) needs a nightly toolchain for its sanitizers; any recent one works.
if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain (cargo fuzz)"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

bash "$(dirname "$0")/cross.sh" setup   # ARM cross compilers, qemu, Rust targets (cross/README.md)

log "toolchain ready"
