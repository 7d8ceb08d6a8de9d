#!/usr/bin/env bash
# What `picket run` costs: storms of execs, file writes, TCP connections and read-only opens,
# each run without the agent and with it, alternately, for several rounds (medians; this machine
# is shared and noisy, so the figures that count are ratios taken in the same run); the agent's
# CPU time per event; the same storms with the agent running the policy without its
# behavioural section (what interpreters, lineage, sensitive and append-only files cost), and
# with the agent enforcing (exec and network guards refusing what the policy does not allow,
# against the main runs' dry run); the highest event rate it takes without loss, and what it
# loses above; its memory idle and at that ceiling, and the BPF maps' memory; the time each of its
# BPF programs spends in the kernel per action of each storm (the kernel's BPF statistics, on for
# that run alone); the throughput of its SHA-256 against OpenSSL; the size of the binary. Records what it measures as samples; `xtask bench-report agent` makes
# the figures and rewrites the matching sections of docs/PERFORMANCE.md.
#
# Usage: sudo [BEFORE=/path/to/an/earlier/picket [BEFORE_COMMIT=REV]] bench/agent.sh [--smoke]
#   --smoke: a few seconds, small counts, one round; checks the harness works (figures are
#   printed, not written to docs/PERFORMANCE.md, and are meaningless).
#   BEFORE: every round of every storm also runs with that agent (same config and policy, its
#   own state directory), right after the run with this one; the "Agent cost" section then
#   compares the two, measured in the same run. BEFORE_COMMIT names what that binary was built
#   from (else its `--version` is recorded). Build it with the release profile: the smoke run's
#   own agent is the debug build, so only the full run compares like with like. The earlier
#   agent is given the policy without its behavioural section (bundle format 1, which agents
#   from before that section read).
# Counts can be set through EXECS, WRITES, CONNECTS, READS, READ_FILES, ROUNDS,
# CEILING_SECONDS, HASH_MIB.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SMOKE=no
[ "${1:-}" = --smoke ] && SMOKE=yes
if [ "$SMOKE" = yes ]; then
    : "${EXECS:=100}" "${WRITES:=2000}" "${CONNECTS:=100}" "${READS:=2000}" "${READ_FILES:=100}"
    : "${ROUNDS:=1}" "${CEILING_SECONDS:=0.2}"
    : "${HASH_MIB:=16}"
    RATES="20000 0"
    if [ -z "${PICKET_BENCH_DOC:-}" ]; then
        PICKET_BENCH_DOC="$(mktemp /tmp/picket-bench-doc.XXXXXX)"
        OWN_DOC="$PICKET_BENCH_DOC" # removed on exit: the figures are printed
        cp docs/PERFORMANCE.md "$PICKET_BENCH_DOC"
        export PICKET_BENCH_DOC
    fi
else
    : "${EXECS:=5000}" "${WRITES:=20000}" "${CONNECTS:=5000}" "${READS:=100000}"
    : "${READ_FILES:=1000}" "${ROUNDS:=5}" "${CEILING_SECONDS:=2}"
    : "${HASH_MIB:=512}"
    RATES="10000 25000 50000 100000 200000 400000 0"
fi
PORT=47173
if [ -n "${BEFORE:-}" ]; then
    BEFORE="$(readlink -f "$BEFORE")"
    [ -x "$BEFORE" ] || { echo "BEFORE=$BEFORE is not an executable" >&2; exit 1; }
fi

WORK="$(mktemp -d /var/tmp/picket-agent-bench.XXXXXX)"
SAMPLES="$WORK/samples"
AGENT=""
# The kernel's BPF statistics (Linux >= 5.8), turned on only for the runs that read them and put
# back as they were found, whatever happens.
BPF_STATS=/proc/sys/kernel/bpf_stats_enabled
BPF_STATS_WAS=""
[ -w "$BPF_STATS" ] && BPF_STATS_WAS=$(cat "$BPF_STATS")
cleanup() {
    if [ -n "$AGENT" ]; then kill "$AGENT" 2>/dev/null || true; fi
    if [ -n "$BPF_STATS_WAS" ]; then echo "$BPF_STATS_WAS" > "$BPF_STATS" || true; fi
    rm -rf "$WORK" "${OWN_DOC:-}"
}
trap cleanup EXIT

# The smoke run takes the debug build (see build_picket); figures come from the release build.
[ "$SMOKE" = yes ] && export PICKET_BENCH_PROFILE="${PICKET_BENCH_PROFILE:-debug}"
build_picket
build_xtask
cc -O2 -o "$WORK/flood" bench/flood.c

# A baseline that allows what the storms do, so that the agent does its full per-event work
# (process table, hashes, detection) without raising alerts about them. Two bundles of it: with a
# behavioural section (the storms' interpreters and lineage, sensitive files the storms do not
# open, append-only files they do not touch), which this agent enforces in the main runs, and
# without it (format 1), for the runs that tell what that section costs and for the earlier agent.
"$PICKET" keygen --out "$WORK/k" >/dev/null
mkdir -p "$WORK/trust" "$WORK/files" "$WORK/reads" "$WORK/sensitive" "$WORK/logs"
cp "$WORK/k.pub" "$WORK/trust/"
for i in $(seq "$READ_FILES"); do echo "$i" > "$WORK/reads/$i"; done
for i in $(seq 10); do echo "$i" > "$WORK/sensitive/$i"; done
canon() { readlink -f "$1"; }
allow_exe() {
    local p
    p=$(canon "$1")
    printf '\n[[executable]]\npath = "%s"\nsha256 = "%s"\n' "$p" "$(sha256sum "$p" | cut -d' ' -f1)"
}
# The system's perl and python3, run by their own names: a version manager's shim on PATH
# (pyenv's is a shell script that runs two more) would add its own execs to every storm.
system_exe() {
    local p
    p=$(PATH=/usr/local/bin:/usr/bin:/bin command -v "$1") || {
        echo "$1 is not installed in /usr/local/bin, /usr/bin or /bin (scripts/setup.sh installs it)" >&2
        exit 1
    }
    canon "$p"
}
# This script's program: the shell, or (as the agent names an interpreter's program) the script.
SHELL_EXE=$(canon /proc/$$/exe)
SCRIPT="$PWD/bench/agent.sh"
PERL=$(system_exe perl)
PYTHON=$(system_exe python3)
TRUE=$(canon /usr/bin/true)
# The dynamic loaders (PT_INTERP) of the storms' programs: the kernel opens the loader for each
# dynamic exec, and enforcement judges it as a file of its own, so a baseline lists it.
loader() {
    readelf -l "$1" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]$/\1/p'
}
LOADERS=$(for p in "$TRUE" "$PERL" "$PYTHON" "$WORK/flood"; do
    l=$(loader "$p")
    [ -z "$l" ] || canon "$l"
done | sort -u)
[ -n "$LOADERS" ] || { echo "no dynamic loader found in $TRUE (readelf -l)" >&2; exit 1; }
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
    allow_exe "$TRUE"
    allow_exe "$PERL"
    allow_exe "$PYTHON"
    allow_exe "$WORK/flood"
    for l in $LOADERS; do allow_exe "$l"; done
} > "$WORK/policy-plain.toml"
{
    cat "$WORK/policy-plain.toml"
    printf '\n[behaviour]\ninterpreters = ["%s", "%s"]\n' "$PERL" "$PYTHON"
    for pair in "$SHELL_EXE $PERL" "$SHELL_EXE $PYTHON" "$SCRIPT $PERL" "$SCRIPT $PYTHON" "$PERL $TRUE"; do
        printf '\n[[behaviour.lineage]]\nparent = "%s"\nchild = "%s"\n' ${pair}
    done
    for i in $(seq 10); do
        printf '\n[[behaviour.sensitive]]\npath = "%s"\nreaders = ["%s"]\n' "$WORK/sensitive/$i" "$TRUE"
    done
    printf '\n[[behaviour.append_only]]\nglob = "%s/*.log"\nrotated_by = ["%s"]\n' "$WORK/logs" "$TRUE"
} > "$WORK/policy.toml"
# The same policy enforced: the exec guard holds every exec on the machine until the agent
# answers, and the network guard judges every connect, send and bind in the kernel. So that it
# refuses nothing else that runs meanwhile (this script's own commands, xtask, other people's
# builds), it also allows, by location, every file under every top-level directory (the storms'
# programs and their loader are still checked by SHA-256: a listed path goes before a glob), and
# every outbound destination. Binds are judged by port: a fixed port other than the storm's
# would be refused (the e2e lock keeps the tests that listen from running meanwhile).
{
    cat "$WORK/policy.toml"
    printf '
[modes]
executables = "enforce"
network = "enforce"
'
    for d in /*/; do
        d=${d%/}
        case "$d" in /proc | /sys) continue ;; esac
        printf '
[[executable_glob]]
glob = "%s/**"
weak = true
' "$d"
    done
    for cidr in 0.0.0.0/0 ::/0; do
        printf '
[[network.outbound]]
cidr = "%s"
ports = "any"
protocol = "any"
' "$cidr"
    done
} > "$WORK/policy-enforce.toml"
for p in policy policy-plain policy-enforce; do
    "$PICKET" policy sign --key "$WORK/k.key" --in "$WORK/$p.toml" --out "$WORK/$p.bundle" >/dev/null
done
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
# This agent without the behavioural section: the same settings, its own state.
sed -e "s|^state_dir = .*|state_dir = \"$WORK/state-plain\"|" \
    -e "s|^policy = .*|policy = \"$WORK/policy-plain.bundle\"|" "$WORK/picket.toml" > "$WORK/picket-plain.toml"
# This agent enforcing: the same settings, its own state and alerts.
sed -e "s|^state_dir = .*|state_dir = \"$WORK/state-enforce\"|" \
    -e "s|^policy = .*|policy = \"$WORK/policy-enforce.bundle\"|" \
    -e "s|^file = .*|file = \"$WORK/alerts-enforce.jsonl\"|" "$WORK/picket.toml" > "$WORK/picket-enforce.toml"
# The earlier agent: the same settings, its own state (policy store, sequence, snapshot).
sed -e "s|^state_dir = .*|state_dir = \"$WORK/state-before\"|" \
    -e "s|^policy = .*|policy = \"$WORK/policy-plain.bundle\"|" "$WORK/picket.toml" > "$WORK/picket-before.toml"

exec_storm() { "$PERL" -e 'for (1..$ARGV[0]) { system("/usr/bin/true") == 0 or die }' "$EXECS"; }
write_storm() {
    "$PYTHON" - "$WORK/files/f" "$WRITES" <<'PY'
import os, sys
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
PY
}
connect_storm() {
    "$PYTHON" - "$PORT" "$CONNECTS" <<'PY'
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
# Read-only opens of READ_FILES files, READS in all: dropped in the kernel at the open's entry,
# and none of them is one of the sensitive files the policy's fanotify marks watch.
read_storm() {
    "$PYTHON" - "$WORK/reads" "$READ_FILES" "$READS" <<'PY'
import os, sys
d, files, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
paths = [os.path.join(d, str(i + 1)) for i in range(files)]
for i in range(n):
    os.close(os.open(paths[i % files], os.O_RDONLY))
PY
}
sample smoke "$SMOKE"
sample rounds "$ROUNDS"
sample execs "$EXECS"
sample writes "$WRITES"
sample connects "$CONNECTS"
sample reads "$READS"
sample read_files "$READ_FILES"
sample ceiling_seconds "$CEILING_SECONDS"
sample hash_mib "$HASH_MIB"
if [ -n "${BEFORE:-}" ]; then
    sample before_commit "${BEFORE_COMMIT:-$("$BEFORE" --version)}"
fi

# CPU time of every thread of the agent, in nanoseconds (from /proc/PID/task/*/schedstat, finer
# than the clock ticks of /proc/PID/stat).
cpu_ns() { "$XTASK" probe cpu-ns "$1"; }
kib() { "$XTASK" probe kib "$1" "$2"; }
start_agent() { # [BINARY CONFIG]: this agent by default
    # The log is removed first: the shell truncates it in the background job, so a grep right
    # after the start could otherwise still read the previous agent's "running with policy".
    rm -f "$WORK/agent.log"
    "${1:-$PICKET}" run --config "${2:-$WORK/picket.toml}" 2>"$WORK/agent.log" &
    AGENT=$!
    for _ in $(seq 600); do
        grep -qs "running with policy" "$WORK/agent.log" && return 0
        kill -0 "$AGENT" 2>/dev/null || break
        sleep 0.1
    done
    echo "the agent did not start:" >&2
    cat "$WORK/agent.log" >&2
    exit 1
}
# Waits until the agent's log has a line containing $1 (after start_agent).
wait_log() {
    for _ in $(seq 600); do
        grep -qsF "$1" "$WORK/agent.log" && return 0
        kill -0 "$AGENT" 2>/dev/null || break
        sleep 0.1
    done
    echo "the agent's log never said \"$1\":" >&2
    cat "$WORK/agent.log" >&2
    exit 1
}
# Runs each program of the storms once: the enforcing agent hashes each file (and the loader)
# at its first exec and answers from its cache after; the timed storm starts with it warm.
warm_up() {
    "$TRUE"
    "$PERL" -e 'system("/usr/bin/true") == 0 or die'
    "$PYTHON" -c ''
}
stop_agent() {
    kill -TERM "$AGENT"
    wait "$AGENT" || true
    AGENT=""
}
# A smoke run's storms are small enough for the sensors: the agent must have received at
# least one record per action of the storm (STORM "EVENTS MISSES").
smoke_check_storm() {
    [ "$SMOKE" = yes ] || return 0
    local want
    case "$1" in
        exec) want=$EXECS ;;
        write) want=$WRITES ;;
        connect) want=$CONNECTS ;;
        read)
            # Read-only opens are dropped in the kernel: far fewer records than opens.
            if [ "${2%% *}" = "" ] || [ "${2%% *}" -ge "$READS" ]; then
                echo "smoke run: the agent received ${2%% *} records during the read storm of $READS read-only opens" >&2
                exit 1
            fi
            return 0
            ;;
    esac
    if [ "${2%% *}" = "" ] || [ "${2%% *}" -lt "$want" ]; then
        echo "smoke run: the agent received ${2%% *} records during the $1 storm of $want" >&2
        tail -5 "$WORK/agent.log" >&2
        exit 1
    fi
}
# Runs storm $1 under agent $3 (config $4) with the kernel's BPF statistics on, and records its
# programs' runs and time before and after it as STORM_$2bpf_before and _after. Nothing when the
# kernel has no statistics.
bpf_stats_run() { # STORM PREFIX BINARY CONFIG
    [ -n "$BPF_STATS_WAS" ] || return 0
    start_agent "$3" "$4"
    echo 1 > "$BPF_STATS"
    sample "$1_$2bpf_before" "$("$XTASK" probe bpf-programs "$AGENT")"
    "$1_storm"
    sample "$1_$2bpf_after" "$("$XTASK" probe bpf-programs "$AGENT")"
    echo "$BPF_STATS_WAS" > "$BPF_STATS"
    stop_agent
}
# Total records the agent's log says were lost so far.
lost_total() { "$XTASK" probe lost "$WORK/agent.log"; }

for round in $(seq "$ROUNDS"); do
    for storm in exec write connect read; do
        timed "${storm}_without_ns" "${storm}_storm"
        start_agent
        sample "${storm}_cpu_ns_before" "$(cpu_ns "$AGENT")"
        timed "${storm}_with_ns" "${storm}_storm"
        sleep 1 # let the agent drain what is queued before reading its CPU time
        sample "${storm}_cpu_ns_after" "$(cpu_ns "$AGENT")"
        stop_agent
        # What the agent handled: the storm's records and whatever else ran on the machine;
        # each executable it had not seen is hashed once (a miss).
        stopped=$("$XTASK" probe stopped "$WORK/agent.log")
        sample "${storm}_stopped" "$stopped"
        smoke_check_storm "$storm" "$stopped"
        start_agent "$PICKET" "$WORK/picket-plain.toml"
        sample "${storm}_plain_cpu_ns_before" "$(cpu_ns "$AGENT")"
        timed "${storm}_plain_ns" "${storm}_storm"
        sleep 1
        sample "${storm}_plain_cpu_ns_after" "$(cpu_ns "$AGENT")"
        stop_agent
        sample "${storm}_plain_stopped" "$("$XTASK" probe stopped "$WORK/agent.log")"
        if [ -n "${BEFORE:-}" ]; then
            start_agent "$BEFORE" "$WORK/picket-before.toml"
            sample "${storm}_before_cpu_ns_before" "$(cpu_ns "$AGENT")"
            timed "${storm}_before_ns" "${storm}_storm"
            sleep 1
            sample "${storm}_before_cpu_ns_after" "$(cpu_ns "$AGENT")"
            stop_agent
            sample "${storm}_before_stopped" "$("$XTASK" probe stopped "$WORK/agent.log")"
        fi
        # This agent enforcing, its guards in force before the storm and its cache warm.
        start_agent "$PICKET" "$WORK/picket-enforce.toml"
        wait_log "executables: guard started (enforce)"
        wait_log "network: guard in force (enforce"
        warm_up
        sample "${storm}_enforce_cpu_ns_before" "$(cpu_ns "$AGENT")"
        timed "${storm}_enforce_ns" "${storm}_storm"
        sleep 1
        sample "${storm}_enforce_cpu_ns_after" "$(cpu_ns "$AGENT")"
        stop_agent
        stopped=$("$XTASK" probe stopped "$WORK/agent.log")
        sample "${storm}_enforce_stopped" "$stopped"
        smoke_check_storm "$storm" "$stopped"
        # The execs its exec guard judged in its life: 2 per spawn of a storm (the file and its
        # loader), and whatever else ran.
        judged=$("$XTASK" probe judged "$WORK/agent.log")
        sample "${storm}_enforce_judged" "$judged"
        if [ "$SMOKE" = yes ] && [ "$storm" = exec ] && [ "${judged:-0}" -lt $((2 * EXECS)) ]; then
            echo "smoke run: the enforcing agent judged ${judged:-no} execs during the exec storm of $EXECS spawns" >&2
            tail -5 "$WORK/agent.log" >&2
            exit 1
        fi
        # The time in each of the agent's programs, in a run of its own: the statistics cost
        # every program run two clock reads, which the timed runs above go without.
        bpf_stats_run "$storm" "" "$PICKET" "$WORK/picket.toml"
        if [ -n "${BEFORE:-}" ]; then
            bpf_stats_run "$storm" before_ "$BEFORE" "$WORK/picket-before.toml"
        fi
    done
    echo "round $round/$ROUNDS of the storms done" >&2
done
# The policy allows what the storms do: a smoke run fails on any alert about their programs or
# their loader (a dry run's would_block included; an unexpected lineage is about its child) or
# their files raised by a process of this script (others may run /usr/bin/true meanwhile).
if [ "$SMOKE" = yes ] && [ -f "$WORK/alerts.jsonl" ] &&
    "$PYTHON" - "$WORK/alerts.jsonl" "$$" "$WORK/" "$TRUE" "$PERL" "$PYTHON" $LOADERS >&2 <<'PY'; then
import json, sys
path, shell, work, programs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
found = False
for line in open(path):
    alert = json.loads(line)
    process = alert.get("process") or {}
    pids = [process.get("pid"), process.get("ppid")] + [a.get("pid") for a in process.get("ancestry", [])]
    subject = alert.get("path") or ""
    if shell in pids and (subject in programs or subject.startswith(work)):
        print(line, end="")
        found = True
sys.exit(0 if found else 1)
PY
    echo "smoke run: the storms raised the alerts above" >&2
    exit 1
fi
# What the enforcing runs refused, on the whole machine (the policy means to refuse nothing),
# and whether a guard could not start: the smoke run fails on any; the full run reports them.
refused=$("$PYTHON" - "$WORK/alerts-enforce.jsonl" <<'PY'
import json, os, sys
kinds = ("blocked_exec", "blocked_connection", "blocked_listener", "enforcement_weakened")
found = []
if os.path.exists(sys.argv[1]):
    for line in open(sys.argv[1]):
        alert = json.loads(line)
        if alert.get("kind") in kinds:
            found.append(alert)
            print(line, end="", file=sys.stderr)
print(len(found))
PY
)
sample enforce_refused "$refused"
if [ "$SMOKE" = yes ] && [ "$refused" != 0 ]; then
    echo "smoke run: the enforcing runs refused something or could not enforce (alerts above)" >&2
    exit 1
fi

# Idle memory, then the ceiling: file opens at rising rates for CEILING_SECONDS each, under one
# agent; after each step the loss counters (read by the agent every second) are collected.
start_agent
sleep 5
sample idle_rss_kib "$(kib "$AGENT" VmRSS)"
sample bpf_maps "$("$XTASK" probe bpf-maps "$AGENT")"
# RSS sampled every 50 ms through the ceiling steps: the agent's memory under load (VmHWM
# would also count the start-up peak, reported apart).
"$XTASK" probe peak-rss "$AGENT" > "$WORK/rss" &
SAMPLER=$!
for rate in $RATES; do
    before=$(lost_total)
    opens=$("$WORK/flood" "$WORK/files/g" "$CEILING_SECONDS" "$rate") # COUNT SECONDS
    sleep 2.5
    sample step "$rate $opens $before $(lost_total)"
done
sample startup_peak_kib "$(kib "$AGENT" VmHWM)"
sample lost_end "$(lost_total)"
stop_agent
wait "$SAMPLER" || true
sample load_rss_kib "$(cat "$WORK/rss")"
echo "ceiling steps done" >&2

# SHA-256: the agent's hashing path (`agent/examples/hash_speed.rs`: `digest_of_file`, as the
# agent hashes an executable) against OpenSSL's on the same files in memory (tmpfs), one thread,
# alternately in every round: a 1 MiB and a 16 MiB file, each hashed over and over in one
# process (`openssl dgst -sha256 FILE FILE ...`), about HASH_MIB MiB per run; then the hash alone,
# one 16 KiB block in memory over and over, against `openssl speed -evp sha256` on 16 KiB blocks.
# Each is timed in CPU time (user and system, of the process; `openssl speed` divides by its
# user time), which the machine's other work disturbs far less than wall time.
cargo build --locked $([ "${PICKET_BENCH_PROFILE:-release}" = debug ] || echo --release) \
    --package picket-agent --example hash_speed >&2
HASH_SPEED="$(dirname "$PICKET")/examples/hash_speed"
hashdir="$(mktemp -d /dev/shm/picket-hash.XXXXXX)"
hash_seconds=$([ "$SMOKE" = yes ] && echo 1 || echo 2)
# Runs COMMAND... with its output in $WORK/hash.out and records its CPU time (user and
# system) in nanoseconds under KEY.
cpu_timed() { # KEY COMMAND...
    local key=$1 times
    shift
    times=$( { TIMEFORMAT='%3U %3S'; time "$@" > "$WORK/hash.out" 2> "$WORK/hash.err"; } 2>&1 ) ||
        { cat "$WORK/hash.err" >&2; return 1; }
    sample "$key" "$(awk '{ printf "%.0f", ($1 + $2) * 1e9 }' <<< "$times")"
}
for mib in 1 16; do
    head -c "${mib}M" /dev/urandom > "$hashdir/$mib"
    sample hash_file "$mib $(( HASH_MIB / mib > 0 ? HASH_MIB / mib : 1 ))"
done
for _ in $(seq "$ROUNDS"); do
    for mib in 1 16; do
        count=$(( HASH_MIB / mib > 0 ? HASH_MIB / mib : 1 ))
        files=()
        for _ in $(seq "$count"); do files+=("$hashdir/$mib"); done
        cpu_timed "hash_${mib}_picket_ns" "$HASH_SPEED" "$hashdir/$mib" "$count"
        ours=$(cat "$WORK/hash.out")
        if command -v openssl >/dev/null; then
            cpu_timed "hash_${mib}_openssl_ns" openssl dgst -sha256 -r "${files[@]}"
            theirs=$(tail -n 1 "$WORK/hash.out")
            # Both must have hashed the same bytes to the same digest.
            [ "${theirs%% *}" = "$ours" ] || {
                echo "SHA-256 of $hashdir/$mib: picket $ours, openssl ${theirs%% *}" >&2
                exit 1
            }
        fi
    done
    sample hash_blocks_picket_bps "$("$HASH_SPEED" --blocks 16384 "$hash_seconds")"
    if command -v openssl >/dev/null; then
        sample openssl_kbs "$(openssl speed -seconds "$hash_seconds" -bytes 16384 -evp sha256 2>/dev/null |
            "$XTASK" probe openssl-sha256)"
    fi
done
command -v openssl >/dev/null ||
    echo "openssl is not installed (scripts/setup.sh installs it): no SHA-256 reference" >&2
rm -rf "$hashdir"

# Sizes.
strip -o "$WORK/picket.stripped" "$PICKET"
sample stripped_bytes "$(stat -c %s "$WORK/picket.stripped")"
sample cross_sizes "$PWD/target/cross/sizes.tsv"

bench_report agent
