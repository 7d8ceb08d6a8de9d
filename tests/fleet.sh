#!/usr/bin/env bash
# End to end: the README's main command, `scripts/run.sh`, brings up a whole local fleet
# (development PKI, a signed baseline of this machine, picket-backend with the Mosquitto it
# runs, picket run), shows an alert for an unknown executable run from /tmp as the backend stores it, stops
# everything on SIGTERM (as on Ctrl-C), and works again on a second run.
#
# Runs as root (the agent loads eBPF programs). Uses the debug build (PICKET_BUILD_PROFILE=dev),
# its own fleet directory and free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d /var/tmp/picket-fleet-test.XXXXXX)"
export PICKET_FLEET_DIR="$WORK/fleet"
export PICKET_FLEET_BROKER_PORT="$(free_port)"
export PICKET_FLEET_HTTP_PORT="$(free_port)"
export PICKET_BUILD_PROFILE=dev
FLEET_PID=""
cleanup() {
    [ -z "$FLEET_PID" ] || kill -TERM -- "-$FLEET_PID" 2>/dev/null || true
    sleep 1
    pkill -f "$WORK/fleet" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK" /tmp/picket-fleet-test-bin
}
trap cleanup EXIT

# Starts the fleet in its own process group; waits for its "Try" banner.
start() {
    setsid bash scripts/run.sh > "$1" 2>&1 &
    FLEET_PID=$!
    for _ in $(seq 600); do
        grep -q "Picket fleet running" "$1" && return 0
        kill -0 "$FLEET_PID" 2>/dev/null || { tail -20 "$1" >&2; fail "scripts/run.sh exited before the fleet ran"; }
        sleep 0.5
    done
    tail -20 "$1" >&2
    fail "the fleet did not start within 300 s"
}

# SIGTERM to the whole group, as a terminal's Ctrl-C reaches every program; everything must go.
stop() {
    kill -TERM -- "-$FLEET_PID"
    for _ in $(seq 300); do
        kill -0 "$FLEET_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$FLEET_PID" 2>/dev/null && fail "scripts/run.sh still running 30 s after SIGTERM"
    FLEET_PID=""
    grep -q "stopped; state, alerts and logs are kept" "$1" || { tail -5 "$1" >&2; fail "no clean stop"; }
    if pgrep -f "$WORK/fleet" >/dev/null; then
        pgrep -af "$WORK/fleet" >&2
        fail "fleet processes left running"
    fi
}

wait_for() { # FILE PATTERN WHAT
    for _ in $(seq 300); do
        grep -q -- "$2" "$1" && return 0
        sleep 0.1
    done
    tail -20 "$1" >&2
    fail "$3"
}

# STATE JSON: the fleet's one device is in STATE (`online`, `offline`, ...) by its `state`
# field, and its `online` flag agrees.
device_is() {
    python3 - "$1" "$2" <<'PY'
import json, sys
want, rows = sys.argv[1], json.loads(sys.argv[2])
assert len(rows) == 1, f"{len(rows)} devices"
assert rows[0]["state"] == want, rows[0]["state"]
assert rows[0]["online"] is (want == "online"), rows[0]["online"]
PY
}

BACKEND=target/debug/picket-backend
CONFIG="$PICKET_FLEET_DIR/backend/backend.toml"

# First run: everything is made.
start "$WORK/run1.out"
grep -q "making a development PKI" "$WORK/run1.out" || fail "no PKI made on the first run"
grep -q "scanning this machine" "$WORK/run1.out" || fail "no baseline made on the first run"
wait_for "$WORK/run1.out" " is Online" "the backend never saw the device online"
mkdir -p /tmp/picket-fleet-test-bin
cp /bin/true /tmp/picket-fleet-test-bin/unknown-1
/tmp/picket-fleet-test-bin/unknown-1
wait_for "$WORK/run1.out" "unknown_executable /tmp/picket-fleet-test-bin/unknown-1" \
    "the exec of an unknown binary did not reach the screen"
# The stored row carries the process context.
"$BACKEND" alerts --config "$CONFIG" --kind unknown_executable --json > "$WORK/alerts.json"
python3 - "$WORK/alerts.json" <<'PY' || fail "the stored alert lacks its process context"
import json, sys
rows = [a for a in json.load(open(sys.argv[1])) if a.get("path") == "/tmp/picket-fleet-test-bin/unknown-1"]
assert rows, "no stored alert for the binary"
process = rows[0]["process"]
assert process["exe"] == "/tmp/picket-fleet-test-bin/unknown-1", process
assert process["pid"] and process["sha256"], process
PY
devices="$("$BACKEND" devices --config "$CONFIG" --json)"
device_is online "$devices" || fail "the device is not shown online: $devices"
stop "$WORK/run1.out"
devices="$("$BACKEND" devices --config "$CONFIG" --json)"
device_is offline "$devices" || fail "the device is not shown offline after the stop: $devices"

# Second run: reuses the PKI and the baseline, and still works.
start "$WORK/run2.out"
grep -q "making a development PKI" "$WORK/run2.out" && fail "the PKI was made again"
grep -q "scanning this machine" "$WORK/run2.out" && fail "the baseline was made again"
wait_for "$WORK/run2.out" " is Online" "the backend never saw the device online on the second run"
cp /bin/true /tmp/picket-fleet-test-bin/unknown-2
/tmp/picket-fleet-test-bin/unknown-2
wait_for "$WORK/run2.out" "unknown_executable /tmp/picket-fleet-test-bin/unknown-2" \
    "the second run shows no alert"
stop "$WORK/run2.out"
echo "fleet: first run, alert stored with context, clean stop, second run: ok"
