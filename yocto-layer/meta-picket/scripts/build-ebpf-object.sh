#!/usr/bin/env bash
# Builds Picket's eBPF object (the sensors' tracepoint programs) for one architecture, exactly
# as the agent's build.rs builds the object it embeds (aya-build: the same toolchain, target and
# compiler flags), and prints the line for the picket recipe's bbappend (PICKET_BPF_OBJECT_SHA256)
# that installs it instead of the layer's released object (release-ebpf-objects.sh builds those
# with this script). The build is reproducible: the same source and toolchain give the same bytes.
#
#   build-ebpf-object.sh [--arch ARCH] [--out-dir DIR]
#
# --arch     the devices' CPU as Rust names it (target_arch): aarch64, arm, x86_64, riscv64...
#            Default: this machine's.
# --out-dir  where to write picket-sensors.bpf.o: the files/ directory of the bbappend.
#            Default: target/yocto in the source tree.
#
# Needs what scripts/setup.sh installs: the pinned toolchain (PICKET_EBPF_TOOLCHAIN, default
# 1.95.0) with rust-src, and bpf-linker. BPF is little endian on every target Picket supports
# (bpfel-unknown-none).
set -euo pipefail

die() {
    echo "build-ebpf-object: $*" >&2
    exit 1
}

src=$(cd "$(dirname "$0")/../../.." && pwd)
[ -f "$src/ebpf/Cargo.toml" ] || die "$src does not look like Picket's source tree"
toolchain=${PICKET_EBPF_TOOLCHAIN:-1.95.0}
out_dir=$src/target/yocto

case "$(uname -m)" in
armv7* | armv6* | arm) arch=arm ;;
*) arch=$(uname -m) ;;
esac

while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
    --arch) arch=$2 ;;
    --out-dir) out_dir=$2 ;;
    *) die "unknown option $1 (see the comment at the top of $0)" ;;
    esac
    shift 2
done
case "$arch" in
aarch64 | arm | x86_64 | x86 | riscv64 | powerpc64 | mips | loongarch64 | s390x) ;;
*) die "unknown --arch '$arch': use Rust's target_arch name (aarch64, arm, x86_64, riscv64...)" ;;
esac
command -v bpf-linker >/dev/null || die "bpf-linker is missing: run scripts/setup.sh"
# LLVM's strip, of the LLVM that bpf-linker is built against (scripts/setup.sh installs it).
strip=${PICKET_LLVM_STRIP:-$(command -v llvm-strip-22 || command -v llvm-strip || true)}
[ -n "$strip" ] || die "llvm-strip-22 is missing: run scripts/setup.sh (or set PICKET_LLVM_STRIP)"

# aya-build's flags: the architecture the programs are built for (aya-ebpf reads registers
# through it), full debug information, and BTF emitted by bpf-linker.
flags=$(printf -- '--cfg=bpf_target_arch="%s"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf' "$arch")
target_dir=$src/target/ebpf-object/$arch
# Reproducible, as build.rs builds it: cargo's trim-paths takes the checkout's, cargo home's and
# rustup's directories out of the debug information and BTF, so the object's bytes depend only
# on the source and the toolchain (Rust, bpf-linker and its LLVM), not on where they are.
RUSTC_BOOTSTRAP=1 CARGO_ENCODED_RUSTFLAGS=$flags \
    CARGO_UNSTABLE_TRIM_PATHS=true CARGO_PROFILE_RELEASE_TRIM_PATHS=object \
    rustup run "$toolchain" cargo build --manifest-path "$src/Cargo.toml" --locked \
    --package picket-ebpf --bins --release --target bpfel-unknown-none -Z build-std=core \
    --target-dir "$target_dir"

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
install -m 0644 "$target_dir/bpfel-unknown-none/release/picket-sensors" \
    "$out_dir/picket-sensors.bpf.o"
# The DWARF that the BTF was made from is of no use once linked (three quarters of the object):
# strip it, keeping .BTF and .BTF.ext, which aya and the verifier read. The agent's build.rs
# strips the object it builds the same way.
"$strip" --strip-debug "$out_dir/picket-sensors.bpf.o"
sha=$(sha256sum "$out_dir/picket-sensors.bpf.o" | cut -d' ' -f1)
echo "# $out_dir/picket-sensors.bpf.o for $arch, from $(git -C "$src" rev-parse HEAD 2>/dev/null || echo "$src"):" >&2
echo "PICKET_BPF_OBJECT_SHA256 = \"$sha\""
