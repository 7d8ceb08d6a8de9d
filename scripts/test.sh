#!/usr/bin/env bash
# Sets up everything and runs every check and test: formatting, clippy (the workspace, then the
# eBPF crate for its own target), unit tests, and the end-to-end tests that load the real
# sensors into the running kernel. Needs root (the sensors load eBPF programs).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each line says how long the run has taken so far (CI's budget is in minutes).
log() { printf '\033[1m[test %2d:%02d]\033[0m %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "the end-to-end tests load eBPF programs: run this as root (sudo $0)"
    exit 1
fi

bash scripts/setup.sh
EBPF_TOOLCHAIN="${PICKET_EBPF_TOOLCHAIN:-1.95.0}"

log "cargo fmt --check; the Yocto layer's crate list matches Cargo.lock"
cargo fmt --all -- --check
# Cheap, and otherwise first caught by the Yocto step near the end of the run.
python3 yocto-layer/meta-picket/scripts/gen-crates-inc.py --check

log "clippy: workspace"
cargo clippy --workspace --exclude picket-ebpf --all-targets --locked -- -D warnings

# The eBPF object clippy's build of the agent just built (agent/build.rs, aya-build) is embedded
# as it is by every later build of this run (unit tests, end-to-end tests, benchmarks, the fleet,
# the host's agent for the VMs) instead of being built again for each profile. The Yocto check
# compares it with the object build-ebpf-object.sh builds.
case "$(uname -m)" in armv7* | armv6* | arm) arch=arm ;; *) arch=$(uname -m) ;; esac
object=$(ls -t target/debug/build/picket-agent-*/out/picket-sensors 2>/dev/null |
    while read -r f; do [ -s "$f" ] && echo "$f" && break; done)
if [ -n "$object" ]; then
    mkdir -p "target/ebpf-cache/$arch"
    cp -p "$object" "target/ebpf-cache/$arch/picket-sensors.bpf.o"
    export PICKET_EBPF_OBJECT_DIR=$PWD/target/ebpf-cache
else
    log "no eBPF object from clippy's build: each build of the agent builds its own"
fi

log "clippy: eBPF crate (bpfel-unknown-none)"
RUSTC_BOOTSTRAP=1 cargo "+$EBPF_TOOLCHAIN" clippy --package picket-ebpf --locked \
    --target bpfel-unknown-none -Z build-std=core --release -- -D warnings

log "tests: shared record layouts, policy, wire protocol, the benchmarks' arithmetic (xtask)"
cargo test --package picket-common --package picket-policy --package picket-proto --package xtask --locked

log "fuzz: the policy bundle decoder and TOML loader, the envelopes the backend decodes, ${PICKET_FUZZ_SECONDS:-20} s each"
fuzz_corpus=$(mktemp -d)
trap 'rm -rf "$fuzz_corpus"' EXIT
for target in bundle toml envelope; do
    mkdir -p "$fuzz_corpus/$target"
    (cd fuzz && cargo +nightly fuzz run "$target" "$fuzz_corpus/$target" "corpus/$target" \
        -- -max_total_time="${PICKET_FUZZ_SECONDS:-20}" -max_len=65536 2>&1 | tail -n 20)
done

log "tests: agent and backend, unit"
cargo test --package picket-agent --package picket-backend --locked

# The end-to-end tests: the test targets of test-support/Cargo.toml, every one of them.
e2e_agent=(sensors burst startup policy baseline learn detection attacks exec enforce broker reporting spool)
e2e_backend=(backend)
listed=$(sed -n '/^\[\[test\]\]/{n;s/^name = "\(.*\)"/\1/p}' test-support/Cargo.toml | sort)
if [ "$listed" != "$(printf '%s\n' "${e2e_agent[@]}" "${e2e_backend[@]}" | sort)" ]; then
    log "test-support/Cargo.toml has other end-to-end tests than scripts/test.sh runs:" $listed
    exit 1
fi

log "tests: end to end, the agent against the running kernel (cargo xtask e2e builds first)"
# The end-to-end tests start their own agents; four at a time keeps a 2-core machine
# responsive.
cargo xtask e2e $(printf -- '--test %s ' "${e2e_agent[@]}") -- --test-threads=4

log "tests: end to end, the backend against Mosquitto with mutual TLS and PostgreSQL (and the"
log "test support's own unit tests)"
cargo xtask e2e --lib $(printf -- '--test %s ' "${e2e_backend[@]}")

log "bench: a smoke run of the benchmark harness (figures not meaningful, not asserted)"
bash bench/run.sh --smoke
bash bench/backend.sh --smoke

log "the local fleet of scripts/run.sh: first run, an alert end to end, clean stop, second run"
bash tests/fleet.sh

log "the backend's systemd unit: verified, rated, and the backend run as its user in its sandbox"
bash scripts/backend-unit-check.sh

log "the Yocto layer: lint, crates, scan-and-sign, the unit sandboxed, real BitBake parses"
bash scripts/yocto-check.sh

log "ARM: static agents, unit tests under qemu-user; the agent on Debian's Linux 6.1 and 5.10 (arm64, armhf, amd64) in qemu-system"
bash scripts/cross.sh test
log "all checks and tests passed"
