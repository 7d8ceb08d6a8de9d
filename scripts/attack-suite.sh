#!/usr/bin/env bash
# The attack suite of docs/DETECTION.md with its benign soak at full length: the device-like
# world's workload for SOAK_SECONDS (default 600) after learning must raise no alert, then the
# attack scenarios, each with exactly its alerts. Needs root (the real sensors); waits for the
# lock the end-to-end tests share.
#
#   sudo scripts/attack-suite.sh            # a ten-minute soak, then the attacks
#   SOAK_SECONDS=3600 sudo scripts/attack-suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "attack-suite: the sensors load eBPF programs: run this as root" >&2
    exit 1
fi
export SOAK_SECONDS="${SOAK_SECONDS:-600}"
case "$SOAK_SECONDS" in
'' | *[!0-9]*)
    echo "attack-suite: SOAK_SECONDS must be a number of seconds, not '$SOAK_SECONDS'" >&2
    exit 1
    ;;
esac
flock /tmp/picket-e2e.lock cargo xtask e2e --test attacks -- --test-threads=1 --nocapture
