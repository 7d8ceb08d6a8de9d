#!/usr/bin/env bash
# Measures reporting over MQTT with mutual TLS on loopback (a real Mosquitto, certificates made
# for the run): the latency from an exec of an unknown binary to its alert reaching a
# subscriber (p50, p99), and the sustained rate at which the agent drains its spool to the
# broker (alerts raised while the broker is down, then timed from reconnection to the last
# one received). Records what it measures as samples; `xtask bench-report report` makes the
# figures and rewrites the "Reporting" section of docs/PERFORMANCE.md.
#
# Usage: sudo bench/report.sh [EXECS] [BACKLOG]     (defaults: 200 5000)
#        sudo bench/report.sh --smoke              (a few seconds: checks that it still runs)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
    SMOKE=1
    shift
fi
EXECS="${1:-200}"
BACKLOG="${2:-5000}"
if [ "$SMOKE" = 1 ]; then EXECS=10; BACKLOG=50; fi
WORK="$(mktemp -d /var/tmp/picket-report.XXXXXX)"
SAMPLES="$WORK/samples"
AGENT="" BROKER="" SUB=""
cleanup() {
    for p in $AGENT $BROKER $SUB; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

PROFILE=release
[ "$SMOKE" = 1 ] && PROFILE=dev
cargo build --locked --package picket-agent $([ "$PROFILE" = release ] && echo --release) >&2
PICKET="$PWD/target/$([ "$PROFILE" = release ] && echo release || echo debug)/picket"
build_xtask
sample profile "$PROFILE"
sample backlog "$BACKLOG"
command -v mosquitto >/dev/null || { echo "mosquitto is missing: run scripts/setup.sh" >&2; exit 1; }

# A development PKI: CA, broker (localhost), device and subscriber certificates.
. scripts/dev-pki.sh
cd "$WORK"
pki_ca . bench-ca 2
pki_cert . broker localhost server 2
pki_cert . device bench-device client 2
pki_cert . sub picket-backend client 2
PORT=$("$XTASK" probe free-port)
cat > mosquitto.conf <<EOF
user root
per_listener_settings false
listener $PORT 127.0.0.1
cafile $WORK/ca.pem
certfile $WORK/broker.pem
keyfile $WORK/broker.key
require_certificate true
use_identity_as_username true
persistence false
log_dest file $WORK/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
EOF
start_broker() {
    mosquitto -c mosquitto.conf >/dev/null 2>&1 &
    BROKER=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return
        sleep 0.05
    done
    echo "mosquitto did not start" >&2; exit 1
}
stop_broker() { kill -9 "$BROKER"; wait "$BROKER" 2>/dev/null || true; BROKER=""; }

# A policy that lists nothing: every exec of our binaries is an unknown executable.
"$PICKET" keygen --out k >/dev/null
mkdir -p trust bin && cp k.pub trust/ && cp /bin/true bin/true
cat > policy.toml <<TOML
[metadata]
name = "bench"
device_class = "bench"
serial = 1
created = "2026-11-22T00:00:00Z"
TOML
"$PICKET" policy sign --key k.key --in policy.toml --out policy.bundle >/dev/null
cat > picket.toml <<TOML
device_class = "bench"
policy = "$WORK/policy.bundle"
trust_dir = "$WORK/trust"
state_dir = "$WORK/state"
[modes]
network = "off"
files = "off"
[output]
stdout = false
[mqtt]
broker = "localhost:$PORT"
ca = "$WORK/ca.pem"
cert = "$WORK/device.pem"
key = "$WORK/device.key"
format = "json"
reconnect_min = "1s"
reconnect_max = "1s"
[spool]
max_bytes = "64MiB"
TOML
for i in $(seq "$BACKLOG"); do ln bin/true "bin/b$i"; done
for i in $(seq "$EXECS"); do ln bin/true "bin/l$i"; done

subscribe() {
    mosquitto_sub -h localhost -p "$PORT" --cafile ca.pem --cert sub.pem --key sub.key \
        -q 1 -t 'picket/v1/bench-device/alert' -F '%U %p' > "$1" 2>/dev/null &
    SUB=$!
}
wait_for() { # FILE PATTERN COUNT TIMEOUT_S
    local deadline=$((SECONDS + $4))
    while [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -lt "$3" ]; do
        [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $3 x $2 in $1" >&2; tail -5 agent.log >&2; exit 1; }
        sleep 0.1
    done
}

# 1. Latency: one exec at a time, each waited for at the subscriber.
start_broker
subscribe latency.out
"$PICKET" run --config picket.toml 2> agent.log &
AGENT=$!
wait_for agent.log "connected to the broker" 1 60
sample latency_out "$WORK/latency.out"
for i in $(seq "$EXECS"); do
    sample sent "$(now) $WORK/bin/l$i"
    "bin/l$i"
    wait_for latency.out "\"kind\":\"unknown_executable\".*\"path\":\"$WORK/bin/l$i\"" 1 10
done

# 2. Throughput: a backlog raised while the broker is down, then drained.
stop_broker
for i in $(seq "$BACKLOG"); do "bin/b$i"; done
sleep 2
kill "$SUB" 2>/dev/null || true; SUB=""
: > drain.out
# The agent is paused while the subscriber subscribes: what it publishes first would otherwise
# be lost to a subscriber not yet there (the sensors' ring buffer holds the few events meanwhile).
kill -STOP "$AGENT"
start_broker
subscribe drain.out
wait_for mosquitto.log "picket/v1/bench-device/alert" 2 20
kill -CONT "$AGENT"
# Until all arrived, or nothing more arrives for 10 s (an exec the sensors lost under load
# never becomes an alert: the table says how many arrived).
PATTERN='"kind":"unknown_executable".*"path":"'"$WORK"'/bin/b'
GOT=0 STILL=0
while [ "$GOT" -lt "$BACKLOG" ] && [ "$STILL" -lt 100 ]; do
    sleep 0.1
    NOW=$(grep -c "$PATTERN" drain.out || true)
    if [ "$NOW" = "$GOT" ]; then STILL=$((STILL + 1)); else STILL=0; GOT=$NOW; fi
done
sample got "$GOT"
# A smoke run's backlog is small enough for the sensors: every alert must have drained.
if [ "$SMOKE" = 1 ] && [ "$GOT" -ne "$BACKLOG" ]; then
    echo "smoke run: $GOT of the $BACKLOG alerts of the backlog arrived" >&2
    tail -5 agent.log >&2
    exit 1
fi
sample drain_out "$WORK/drain.out"
sample agent_log "$WORK/agent.log"
sample rss_kib "$("$XTASK" probe kib "$AGENT" VmHWM)"
cd - >/dev/null

if [ "$SMOKE" = 1 ]; then
    bench_report report --no-write
else
    bench_report report
fi
