#!/usr/bin/env bash
# What `picket run` costs: storms of execs, file writes and TCP connections, each run without
# the agent and with it, alternately, for several rounds (medians; this machine is shared and
# noisy, so the figures that count are ratios taken in the same run); the agent's CPU time per
# event; the highest event rate it takes without loss, and what it loses above; its memory idle
# and at that ceiling, and the BPF maps' memory; the throughput of its SHA-256 against OpenSSL;
# the size of the binary. Rewrites the matching sections of docs/PERFORMANCE.md.
#
# Usage: sudo bench/agent.sh [--smoke]
#   --smoke: a few seconds, small counts, one round; checks the harness works (figures are
#   printed, not written to docs/PERFORMANCE.md, and are meaningless).
# Counts can be set through EXECS, WRITES, CONNECTS, ROUNDS, CEILING_SECONDS, HASH_MIB.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SMOKE=no
[ "${1:-}" = --smoke ] && SMOKE=yes
if [ "$SMOKE" = yes ]; then
    : "${EXECS:=100}" "${WRITES:=2000}" "${CONNECTS:=100}" "${ROUNDS:=1}" "${CEILING_SECONDS:=0.2}"
    : "${HASH_MIB:=16}"
    RATES="20000 0"
    export PICKET_BENCH_DOC="${PICKET_BENCH_DOC:-$(mktemp /tmp/picket-bench-doc.XXXXXX)}"
else
    : "${EXECS:=5000}" "${WRITES:=20000}" "${CONNECTS:=5000}" "${ROUNDS:=5}" "${CEILING_SECONDS:=2}"
    : "${HASH_MIB:=512}"
    RATES="10000 25000 50000 100000 200000 400000 0"
fi
PORT=47173

WORK="$(mktemp -d /var/tmp/picket-agent-bench.XXXXXX)"
AGENT=""
cleanup() {
    if [ -n "$AGENT" ]; then kill "$AGENT" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The smoke run takes the debug build (see build_picket); figures come from the release build.
[ "$SMOKE" = yes ] && export PICKET_BENCH_PROFILE="${PICKET_BENCH_PROFILE:-debug}"
build_picket
cc -O2 -o "$WORK/flood" bench/flood.c

# A baseline that allows what the storms do, so that the agent does its full per-event work
# (process table, hashes, detection) without raising alerts.
"$PICKET" keygen --out "$WORK/k" >/dev/null
mkdir -p "$WORK/trust" "$WORK/files" && cp "$WORK/k.pub" "$WORK/trust/"
allow_exe() {
    local p
    p=$(readlink -f "$1")
    printf '\n[[executable]]\npath = "%s"\nsha256 = "%s"\n' "$p" "$(sha256sum "$p" | cut -d' ' -f1)"
}
{
    cat <<TOML
[metadata]
name = "bench"
device_class = "bench"
serial = 1
created = "2026-11-22T00:00:00Z"

[[network.outbound]]
cidr = "127.0.0.0/8"
ports = $PORT

[[network.listen]]
port = $PORT
TOML
    allow_exe /usr/bin/true
    allow_exe "$(command -v perl)"
    allow_exe "$(command -v python3)"
    allow_exe "$WORK/flood"
} > "$WORK/policy.toml"
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
connect_storm() {
    python3 - "$PORT" "$CONNECTS" <<'PY'
import socket, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1024)
def serve():
    for _ in range(n):
        c, _ = srv.accept()
        c.close()
t = threading.Thread(target=serve)
t.start()
for _ in range(n):
    socket.create_connection(("127.0.0.1", port)).close()
t.join()
PY
}
# Events each storm causes: fork, exec and exit per spawn; one per open; a connect and an
# accept per connection.
events_exec=$((EXECS * 3))
events_write=$WRITES
events_connect=$((CONNECTS * 2))

# CPU time of every thread of the agent, in nanoseconds (finer than the clock ticks of
# /proc/PID/stat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
start_agent() {
    "$PICKET" run --config "$WORK/picket.toml" 2>"$WORK/agent.log" &
    AGENT=$!
    for _ in $(seq 600); do
        grep -q "running with policy" "$WORK/agent.log" && return 0
        kill -0 "$AGENT" 2>/dev/null || break
        sleep 0.1
    done
    echo "the agent did not start:" >&2
    cat "$WORK/agent.log" >&2
    exit 1
}
stop_agent() {
    kill -TERM "$AGENT"
    wait "$AGENT" || true
    AGENT=""
}
# Total records the agent's log says were lost so far.
lost_total() {
    sed -n 's/.* events lost (ring buffer full; total \([0-9]*\)).*/\1/p' "$WORK/agent.log" |
        awk '{s += $1} END {print s + 0}'
}

declare -A ms cpu got misses
for round in $(seq "$ROUNDS"); do
    for storm in exec write connect; do
        t0=$(now); "${storm}_storm"; t1=$(now)
        ms[${storm}_without]+="$(((t1 - t0) / 1000000)) "
        start_agent
        c0=$(cpu_ns "$AGENT")
        t0=$(now); "${storm}_storm"; t1=$(now)
        sleep 1 # let the agent drain what is queued before reading its CPU time
        c1=$(cpu_ns "$AGENT")
        ms[${storm}_with]+="$(((t1 - t0) / 1000000)) "
        cpu[$storm]+="$(((c1 - c0) / 1000)) "
        stop_agent
        # What the agent handled: the storm's records and whatever else ran on the machine;
        # each executable it had not seen is hashed once (a miss).
        got[$storm]+="$(sed -n 's/.*stopped: \([0-9]*\) events.*/\1/p' "$WORK/agent.log") "
        misses[$storm]+="$(sed -n 's/.*hash cache [0-9]* hits \/ \([0-9]*\) misses.*/\1/p' "$WORK/agent.log") "
    done
    echo "round $round/$ROUNDS of the storms done" >&2
done

per() { awk -v us="$1" -v n="$2" 'BEGIN { printf "%.1f", us / n }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v + 0 <= t + 0 ? "met" : "**missed**") }'; }
storms="| storm | without agent | with \`picket run\` | slowdown (target ≤ 1.05) | records received (storm's) | files hashed | agent CPU per record received (target < 10 µs) |
| --- | --- | --- | --- | --- | --- | --- |"
missed=""
for storm in exec write connect; do
    case $storm in
    exec) what="$EXECS spawns of /usr/bin/true (perl \`system\`)" n=$events_exec ;;
    write) what="$WRITES opens for writing (python)" n=$events_write ;;
    connect) what="$CONNECTS TCP connections to a loopback listener (python)" n=$events_connect ;;
    esac
    w=$(med "${ms[${storm}_without]}"); W=$(med "${ms[${storm}_with]}"); c=$(med "${cpu[$storm]}")
    r=$(med "${got[$storm]}"); h=$(med "${misses[$storm]}")
    slow=$(ratio "$w" "$W"); pe=$(per "$c" "$r")
    storms+="
| $what | $w ms | $W ms | $slow ($(verdict "$slow" 1.05)) | $r ($n) | $h | $pe µs ($(verdict "$pe" 9.99)) |"
    [ "$(verdict "$slow" 1.05)" = met ] || missed+=" $storm storm slowdown $slow;"
    [ "$(verdict "$pe" 9.99)" = met ] || missed+=" $storm CPU per record $pe µs;"
done

# Idle memory, then the ceiling: file opens at rising rates for CEILING_SECONDS each, under one
# agent; after each step the loss counters (read by the agent every second) are collected.
start_agent
sleep 5
idle_rss=$(kib "$AGENT" VmRSS)
bpf_maps=$(for f in /proc/"$AGENT"/fdinfo/*; do
    awk '/^map_type:/ {t = $2} /^map_id:/ {id = $2} /^memlock:/ {m = $2}
         END {if (id != "") print id, t, m}' "$f" 2>/dev/null
done | sort -u)
bpf_total=$(echo "$bpf_maps" | awk '{s += $3} END {printf "%.1f", s / 1048576}')
bpf_ring=$(echo "$bpf_maps" | awk '$2 == 27 {s += $3} END {printf "%.1f", s / 1048576}')
bpf_count=$(echo "$bpf_maps" | grep -c . || true)
# RSS sampled every 50 ms through the ceiling steps: the agent's memory under load (VmHWM
# would also count the start-up peak, reported apart).
( while kill -0 "$AGENT" 2>/dev/null; do kib "$AGENT" VmRSS; sleep 0.05; done ) > "$WORK/rss" 2>/dev/null &
SAMPLER=$!
ceiling=0
steps="| asked (opens/s) | achieved (opens/s) | events | lost | lost % |
| --- | --- | --- | --- | --- |"
for rate in $RATES; do
    if [ "$rate" = 0 ]; then
        count=$(awk -v s="$CEILING_SECONDS" 'BEGIN { printf "%d", 500000 * s }')
    else
        count=$(awk -v r="$rate" -v s="$CEILING_SECONDS" 'BEGIN { printf "%d", r * s }')
    fi
    before=$(lost_total)
    secs=$("$WORK/flood" "$WORK/files/g" "$count" "$rate")
    sleep 2.5
    lost=$(($(lost_total) - before))
    achieved=$(awk -v n="$count" -v s="$secs" 'BEGIN { printf "%d", n / s }')
    pct=$(awk -v l="$lost" -v n="$count" 'BEGIN { printf "%.1f", 100 * l / n }')
    asked=$([ "$rate" = 0 ] && echo "as fast as possible" || echo "$rate")
    steps+="
| $asked | $achieved | $count | $lost | $pct |"
    if [ "$lost" = 0 ] && [ "$achieved" -gt "$ceiling" ]; then ceiling=$achieved; fi
done
startup_peak=$(kib "$AGENT" VmHWM)
no_loss=""
if [ "$(lost_total)" = 0 ]; then
    no_loss=" Nothing was lost at any step: the agent's ceiling is above the highest rate
the loop reached here."
fi
stop_agent
wait "$SAMPLER" || true
load_rss=$(sort -n "$WORK/rss" | tail -1)
echo "ceiling steps done" >&2

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
[ "$(verdict "$(mib "$idle_rss")" 7.99)" = met ] || missed+=" idle RSS $(mib "$idle_rss") MiB;"
[ "$(verdict "$(mib "$load_rss")" 15.99)" = met ] || missed+=" RSS at the ceiling $(mib "$load_rss") MiB;"

# SHA-256: the agent's hasher on one file in memory (tmpfs, one thread) against OpenSSL's
# `speed` on 16 KiB blocks, one thread.
hashdir="$(mktemp -d /dev/shm/picket-hash.XXXXXX)"
head -c $((HASH_MIB << 20)) /dev/urandom > "$hashdir/blob"
chmod 755 "$hashdir/blob" # the scan hashes executables
hash_ms=""
for _ in $(seq "$ROUNDS"); do
    t0=$(now)
    "$PICKET" baseline scan --root "$hashdir" --out "$WORK/hash.toml" 2>/dev/null
    t1=$(now)
    hash_ms+="$(((t1 - t0) / 1000000)) "
done
rm -rf "$hashdir"
picket_mbs=$(awk -v m="$HASH_MIB" -v ms="$(med "$hash_ms")" 'BEGIN { printf "%.0f", m * 1.048576 / (ms / 1000) }')
openssl_seconds=$([ "$SMOKE" = yes ] && echo 1 || echo 3)
openssl_mbs=0
if command -v openssl >/dev/null; then
    openssl_mbs=$(openssl speed -seconds "$openssl_seconds" -bytes 16384 -evp sha256 2>/dev/null |
        awk '/^sha256/ || /^SHA256/ {v = $NF} END {sub("k", "", v); printf "%.0f", v / 1000}')
else
    echo "openssl is not installed (scripts/setup.sh installs it): no SHA-256 reference" >&2
fi

# Sizes.
strip -o "$WORK/picket.stripped" "$PICKET"
size_kib=$(($(stat -c %s "$WORK/picket.stripped") / 1024))
if [ -f target/cross/sizes.tsv ]; then
    cross=$(awk -F'\t' '{ printf "    %-32s %-14s %10s %10s  %s\n", $1, $2, $3, $4, $5 }' \
        target/cross/sizes.tsv)
else
    cross="    not built (run \`scripts/cross.sh build\`, which writes target/cross/sizes.tsv)"
fi

machine="$(machine)"
today=$(date -u +%Y-%m-%d)
mode=$([ "$SMOKE" = yes ] && echo "smoke run, figures meaningless" || echo "$ROUNDS rounds, medians")

section="## Agent cost

Measured by \`bench/agent.sh\` ($mode) on $today: $machine.
Each storm runs alone, then with \`picket run\` enforcing a policy that allows it (full per-event
work, no alerts), alternately. CPU per record is the agent's CPU time (all threads, from
\`/proc/PID/task/*/schedstat\`) over the storm and one second after it, divided by the records
it received in its life (the storm's: 3 per spawn, fork, exec and exit; 1 per open; 2 per
connection, connect and accept; plus what else ran on the machine meanwhile). Files hashed:
executables the agent had not seen before, each hashed once when first run (on a shared
machine, other people's freshly built binaries, some of them large).

$storms
"
if [ -n "$missed" ]; then
    section+="
Targets missed:$missed
"
else
    section+="
Every target is met.
"
fi
section+="
## Event-rate ceiling and memory

Measured by \`bench/agent.sh\` on $today: $machine.
One \`picket run\` with the default ring buffer; file opens (a loop in C, \`bench/flood.c\`) at
rising rates for $CEILING_SECONDS s each; losses are the agent's own count (ring buffer full),
never silent.

$steps

Highest rate without loss: **$ceiling opens/s**.$no_loss

| memory | measured | target |
| --- | --- | --- |
| RSS idle (5 s after start) | $(mib "$idle_rss") MiB | < 8 MiB ($(verdict "$(mib "$idle_rss")" 7.99)) |
| RSS under load (highest of samples every 50 ms through the ceiling steps) | $(mib "$load_rss") MiB | < 16 MiB ($(verdict "$(mib "$load_rss")" 15.99)) |
| RSS peak over the agent's life (VmHWM: start-up, loading the sensors) | $(mib "$startup_peak") MiB | |
| BPF maps, $bpf_count maps (memlock, from \`/proc/PID/fdinfo\`) | $bpf_total MiB, of which the ring buffer $bpf_ring MiB | kernel memory, not in RSS |

## Hashing and size

Measured by \`bench/agent.sh\` on $today: $machine.

| measure | picket | baseline | ratio (picket / baseline) |
| --- | --- | --- | --- |
| SHA-256, one thread, $HASH_MIB MiB in memory (\`picket baseline scan\`, process start included) | $picket_mbs MB/s | $openssl_mbs MB/s (\`openssl speed -evp sha256\`, 16 KiB blocks) | $(ratio "$openssl_mbs" "$picket_mbs") |

Stripped \`picket\` (x86_64, release): $size_kib KiB. ARM builds (from \`target/cross/sizes.tsv\`, written by \`scripts/cross.sh\`):

$cross
"
echo "$section"
write_section "Agent cost" "$(echo "$section" | awk '/^## Event-rate ceiling/ {exit} {print}')"
write_section "Event-rate ceiling and memory" "$(echo "$section" | awk '/^## Event-rate ceiling/ {on=1} /^## Hashing and size/ {exit} on {print}')"
write_section "Hashing and size" "$(echo "$section" | awk '/^## Hashing and size/ {on=1} on {print}')"
