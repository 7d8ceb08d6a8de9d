#!/usr/bin/env bash
# Measures what `picket run` costs under load: an exec storm and a file-write storm, each run
# without the agent and with it, alternately, for several rounds (medians; this machine is shared
# and noisy, so the figures that count are ratios taken in the same run). Reports the slowdown
# of the storm and the agent's CPU time per event (user + system, from /proc), and rewrites the
# "Agent cost" section of docs/PERFORMANCE.md.
#
# Usage: sudo bench/storm.sh [EXECS] [WRITES] [ROUNDS]     (defaults: 5000 20000 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

EXECS="${1:-5000}"
WRITES="${2:-20000}"
ROUNDS="${3:-5}"
WORK="$(mktemp -d /var/tmp/picket-storm.XXXXXX)"
AGENT=""
cleanup() { [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release --locked --package picket-agent >&2
PICKET="$PWD/target/release/picket"
TICKS=$(getconf CLK_TCK)

# A baseline that allows what the storms run, so the agent does its full per-event work
# without raising alerts.
"$PICKET" keygen --out "$WORK/k" >/dev/null
mkdir -p "$WORK/trust" "$WORK/files" && cp "$WORK/k.pub" "$WORK/trust/"
cat > "$WORK/policy.toml" <<TOML
[metadata]
name = "storm"
device_class = "bench"
serial = 1
created = "2026-11-22T00:00:00Z"

[[executable]]
path = "/usr/bin/true"
sha256 = "$(sha256sum /usr/bin/true | cut -d' ' -f1)"
TOML
"$PICKET" policy sign --key "$WORK/k.key" --in "$WORK/policy.toml" --out "$WORK/policy.bundle" >/dev/null
cat > "$WORK/picket.toml" <<TOML
device_id = "bench"
device_class = "bench"
policy = "$WORK/policy.bundle"
trust_dir = "$WORK/trust"
state_dir = "$WORK/state"
[output]
stdout = false
file = "$WORK/alerts.jsonl"
TOML

exec_storm() { perl -e 'for (1..$ARGV[0]) { system("/usr/bin/true") == 0 or die }' "$EXECS"; }
write_storm() {
    python3 - "$WORK/files/f" "$WRITES" <<'PY'
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
PY
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
start_agent() {
    "$PICKET" run --config "$WORK/picket.toml" 2>"$WORK/agent.log" &
    AGENT=$!
    for _ in $(seq 600); do
        grep -q "running with policy" "$WORK/agent.log" && return 0
        sleep 0.1
    done
    echo "the agent did not start:" >&2; cat "$WORK/agent.log" >&2; exit 1
}
stop_agent() { kill -TERM "$AGENT"; wait "$AGENT" || true; AGENT=""; }

declare -A ms cpu
for round in $(seq "$ROUNDS"); do
    for storm in exec write; do
        t0=$(now); "${storm}_storm"; t1=$(now)
        ms[${storm}_without]+="$(( (t1 - t0) / 1000000 )) "
        start_agent
        c0=$(cpu_ticks "$AGENT")
        t0=$(now); "${storm}_storm"; t1=$(now)
        sleep 1   # let the agent drain what is queued before reading its CPU time
        c1=$(cpu_ticks "$AGENT")
        ms[${storm}_with]+="$(( (t1 - t0) / 1000000 )) "
        cpu[$storm]+="$(( (c1 - c0) * 1000000 / TICKS )) "
        rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT/status")
        stop_agent
    done
    echo "round $round/$ROUNDS done" >&2
done

per() { awk -v us="$1" -v n="$2" 'BEGIN { printf "%.1f", us / n }'; }

ew=$(med "${ms[exec_without]}"); eW=$(med "${ms[exec_with]}"); ec=$(med "${cpu[exec]}")
fw=$(med "${ms[write_without]}"); fW=$(med "${ms[write_with]}"); fc=$(med "${cpu[write]}")
# An exec storm makes three events per spawn (fork, exec, exit); a write storm one per open.
table="| storm | without agent | with \`picket run\` | slowdown | agent CPU per event |
| --- | --- | --- | --- | --- |
| $EXECS spawns of /usr/bin/true | $ew ms | $eW ms | $(ratio "$ew" "$eW") | $(per "$ec" $((EXECS * 3))) µs |
| $WRITES opens for writing | $fw ms | $fW ms | $(ratio "$fw" "$fW") | $(per "$fc" "$WRITES") µs |

Agent RSS after the last storm: $((rss_kib / 1024)) MiB."
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t ? "met" : "**missed**") }'; }
es=$(ratio "$ew" "$eW"); fs=$(ratio "$fw" "$fW")
epe=$(per "$ec" $((EXECS * 3))); fpe=$(per "$fc" "$WRITES")
table+="

Targets: storm slowdown at most 1.05 (exec: $(verdict "$es" 1.05), write: $(verdict "$fs" 1.05));
agent CPU under 10 µs per event (exec: $(verdict "$epe" 10), write: $(verdict "$fpe" 10));
RSS under 16 MiB under load ($(verdict $((rss_kib / 1024)) 16))."
echo "$table"

machine="$(machine)"
section="## Agent cost

Measured by \`bench/storm.sh\` ($ROUNDS rounds, medians) on $(date -u +%Y-%m-%d): $machine.
The storm runs alone, then with \`picket run\` enforcing a policy that allows it (full per-event
work, no alerts); CPU per event is the agent's user + system time over the storm, divided by the
events it caused.

$table
"
write_section "Agent cost" "$section"
