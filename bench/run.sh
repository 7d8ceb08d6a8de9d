#!/usr/bin/env bash
# Runs every benchmark and rewrites the figures in docs/PERFORMANCE.md (machine, kernel and
# commit included): the agent's cost under storms (in alert mode, and enforcing), its event-rate
# ceiling and memory, hashing and size (bench/agent.sh), the integrity scan (bench/scan.sh),
# then reporting over MQTT/TLS (bench/report.sh). The scripts drive the outside tools and
# record samples; `xtask bench-report` (xtask/) makes the figures and rewrites the sections.
# Needs root (the agent loads its sensors; the scan drops the page cache). About 15 minutes.
#
# Usage: sudo bench/run.sh            the full run
#        sudo bench/run.sh --smoke    a short run that checks the harness still works: small
#                                     counts, one round, figures printed and written to a
#                                     copy of docs/PERFORMANCE.md, not to it (and not
#                                     meaningful)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "the benchmarks load the agent's sensors: run them as root (sudo $0)" >&2
    exit 1
fi
if [ "${1:-}" = --smoke ]; then
    PICKET_BENCH_DOC="$(mktemp /tmp/picket-bench-doc.XXXXXX)"
    export PICKET_BENCH_DOC PICKET_BENCH_PROFILE=debug
    trap 'rm -f "$PICKET_BENCH_DOC"' EXIT
    cp docs/PERFORMANCE.md "$PICKET_BENCH_DOC"
    bash bench/agent.sh --smoke
    bash bench/scan.sh 200 1
    bash bench/report.sh --smoke
    echo "smoke run done: the harness works (figures above are not meaningful)" >&2
else
    bash bench/agent.sh
    bash bench/scan.sh
    bash bench/report.sh
fi
