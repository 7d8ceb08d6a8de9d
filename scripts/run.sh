#!/usr/bin/env bash
# Sets up everything, builds Picket, and runs the main job: `picket monitor`, which prints
# every exec, connection and file change on this machine as JSON lines until Ctrl-C.
# Extra arguments go to `picket monitor` (e.g. --filter exec,net). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "picket loads eBPF programs: run this as root (sudo $0)" >&2
    exit 1
fi

bash scripts/setup.sh
cargo build --release --locked --package picket-agent
exec ./target/release/picket monitor "$@"
