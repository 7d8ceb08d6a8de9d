#!/usr/bin/env bash
# The main job: a whole Picket fleet on this machine, in one command.
#
# Sets up everything (scripts/setup.sh), builds the agent and the backend, and then:
#   1. makes a development PKI (CA, broker, backend and device certificates) and a policy
#      signing key, once, in the fleet directory;
#   2. scans this machine into a baseline policy and signs it (once; kept for later runs);
#   3. starts `picket-backend serve` (SQLite, HTTP API), which starts and supervises its
#      broker, Mosquitto (mutual TLS, per-device ACL; the `[broker]` section of backend.toml),
#      and `picket run` reporting to it over MQTT;
#   4. shows the alerts as the backend stores them, with a hint of what to try, and the fleet
#      console's address and login (user admin, its password kept in backend/admin.password,
#      mode 0600; an API token for scripts in backend/api.token).
# Ctrl-C stops them all. Running it again reuses the PKI, the baseline and the stored alerts.
#
# Needs root: the agent loads eBPF programs.
# Environment: PICKET_FLEET_DIR (default /var/lib/picket-fleet), PICKET_FLEET_BROKER_PORT
# (18883), PICKET_FLEET_HTTP_PORT (18080), PICKET_BUILD_PROFILE (release, or dev).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

log() { printf '\033[1m[fleet]\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "the agent loads eBPF programs into the kernel: run this as root (sudo $0)"
    exit 1
fi

FLEET="${PICKET_FLEET_DIR:-/var/lib/picket-fleet}"
BROKER_PORT="${PICKET_FLEET_BROKER_PORT:-18883}"
HTTP_PORT="${PICKET_FLEET_HTTP_PORT:-18080}"
PROFILE="${PICKET_BUILD_PROFILE:-release}"

bash scripts/setup.sh
if [ "$PROFILE" = release ]; then
    cargo build --release --locked --package picket-agent --package picket-backend
    BIN="$ROOT/target/release"
else
    cargo build --locked --package picket-agent --package picket-backend
    BIN="$ROOT/target/debug"
fi
PICKET="$BIN/picket"
BACKEND="$BIN/picket-backend"

for port in "$BROKER_PORT" "$HTTP_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "port $port is already in use (another fleet running?); set PICKET_FLEET_BROKER_PORT / PICKET_FLEET_HTTP_PORT"
        exit 1
    fi
done

mkdir -p "$FLEET"/{pki,trust,agent,backend,broker}
chmod 700 "$FLEET"
cd "$FLEET"
# The device id is the certificate's CN: letters, digits, `.`, `_`, `-`.
DEVICE="$(hostname | tr -c 'A-Za-z0-9._\n-' '-' | cut -c1-56)"
DEVICE="dev-${DEVICE:-host}"

# 1. The development PKI and the signing key (kept: a second run reuses them).
if [ ! -f pki/ca.pem ]; then
    log "making a development PKI in $FLEET/pki"
    . "$ROOT/scripts/dev-pki.sh"
    pki_ca pki "Picket development fleet CA" 3650
    pki_cert pki broker localhost server 3650
    pki_cert pki backend picket-backend client 3650
    pki_cert pki device "$DEVICE" client 3650
fi
[ -f signing.key ] || "$PICKET" keygen --out signing >/dev/null
cp signing.pub trust/

# 2. A baseline of this machine, signed. A demo file is protected so that changing it shows
# an alert; it is put back as it was at every start.
echo "# Change me to see a protected_file_changed alert." > /etc/picket-fleet-demo.conf
if [ ! -f policy.bundle ]; then
    log "scanning this machine into a baseline (executables under /usr, /bin, /sbin, /lib, /opt)"
    cat > scan.toml <<EOF
protected = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/hosts", "/etc/ssh", "/etc/picket-fleet-demo.conf"]
exclude = ["/var", "/home", "/root", "/srv", "/mnt", "/media", "/work", "/old_root", "/boot", "$FLEET"]

[metadata]
name = "local-fleet"
device_class = "local-fleet"
serial = 1
EOF
    "$PICKET" baseline scan --root / --config scan.toml --out policy.toml
    cat >> policy.toml <<EOF

# The fleet's own traffic on loopback.
[[network.outbound]]
cidr = "127.0.0.1"
ports = $BROKER_PORT

[[network.outbound]]
cidr = "127.0.0.1"
ports = $HTTP_PORT

[[network.listen]]
port = $BROKER_PORT

[[network.listen]]
port = $HTTP_PORT
EOF
    "$PICKET" policy sign --key signing.key --in policy.toml --out policy.bundle
fi

# 3. Backend (with its broker), agent. `serve` writes the broker's configuration and ACL into
# broker/ (from [broker]) and runs Mosquitto; see docs/BACKEND.md, "Managed broker".
cat > backend/backend.toml <<EOF
[mqtt]
host = "localhost"
port = $BROKER_PORT
client_id = "picket-backend"
ca = "$FLEET/pki/ca.pem"
cert = "$FLEET/pki/backend.pem"
key = "$FLEET/pki/backend.key"

[store]
sqlite = "$FLEET/backend/picket.db"

[devices]
heartbeat_timeout = "3m"

[http]
listen = "127.0.0.1:$HTTP_PORT"

[broker]
listen = "127.0.0.1:$BROKER_PORT"
ca = "$FLEET/pki/ca.pem"
cert = "$FLEET/pki/broker.pem"
key = "$FLEET/pki/broker.key"
dir = "$FLEET/broker"
# The backend takes at most 256 messages at a time (its MQTT receive maximum); the broker
# queues the rest of a burst for it, and past this limit drops them (docs/BACKEND.md).
max_queued_messages = 100000
EOF
cat > agent/picket.toml <<EOF
device_class = "local-fleet"
policy = "$FLEET/policy.bundle"
trust_dir = "$FLEET/trust"
state_dir = "$FLEET/agent/state"

[output]
stdout = false

[mqtt]
broker = "localhost:$BROKER_PORT"
ca = "$FLEET/pki/ca.pem"
cert = "$FLEET/pki/device.pem"
key = "$FLEET/pki/device.key"
EOF

# The programs run in sessions of their own, so that Ctrl-C reaches this script only, which
# stops them in order: the agent first (it says "offline" and the backend stores it), then the
# backend, which stops its broker.
PIDS=()
stop_pid() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}
cleanup() {
    trap - EXIT INT TERM
    log "stopping the fleet"
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do stop_pid "${PIDS[$i]}"; done
    wait 2>/dev/null || true
    log "stopped; state, alerts and logs are kept in $FLEET (run again to continue)"
}
trap cleanup EXIT
INTERRUPTED=""
trap 'INTERRUPTED=1' INT TERM

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "$2 did not start listening on port $1; see $3"
    exit 1
}

# The console's first admin, once: its generated password and an API token for scripts are kept
# here, readable by root only.
if [ ! -s backend/admin.password ]; then
    log "adding the console's user admin (password in $FLEET/backend/admin.password)"
    (umask 077
     "$BACKEND" user add admin --role admin --generate --config backend/backend.toml \
         >backend/admin.password.new 2>>backend/backend.log
     mv backend/admin.password.new backend/admin.password)
fi
if [ ! -s backend/api.token ]; then
    (umask 077
     "$BACKEND" user token admin --config backend/backend.toml >backend/api.token.new 2>>backend/backend.log
     mv backend/api.token.new backend/api.token)
fi
chmod 600 backend/admin.password backend/api.token

RUST_LOG=info setsid "$BACKEND" serve --config backend/backend.toml >>backend/backend.log 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
# `serve` answers HTTP once its broker listens; it stops at once if the broker cannot start.
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && break
    kill -0 "$BACKEND_PID" 2>/dev/null || { log "picket-backend stopped:"; tail -15 backend/backend.log >&2; exit 1; }
    sleep 0.1
done
wait_port "$HTTP_PORT" "picket-backend" "$FLEET/backend/backend.log"
wait_port "$BROKER_PORT" "the broker (run by picket-backend)" "$FLEET/broker/mosquitto.log"
# The backend's log is the screen: one line per stored alert, and device presence.
setsid tail -n 0 -F backend/backend.log &
PIDS+=($!)

setsid "$PICKET" run --config agent/picket.toml 2>>agent/agent.log &
AGENT=$!
PIDS+=("$AGENT")
for _ in $(seq 600); do
    grep -q "sensors attached" agent/agent.log 2>/dev/null && break
    kill -0 "$AGENT" 2>/dev/null || { log "the agent stopped:"; tail -5 agent/agent.log >&2; exit 1; }
    sleep 0.1
done

cat >&2 <<EOF

  Picket fleet running: device $DEVICE -> Mosquitto 127.0.0.1:$BROKER_PORT (mutual TLS, run by picket-backend) -> picket-backend
  Try, in another terminal:
    cp /bin/ls /tmp/ls && /tmp/ls                      # an unknown executable, from /tmp
    echo changed >> /etc/picket-fleet-demo.conf        # a protected file
    bash -c 'exec 3<>/dev/tcp/127.0.0.1/22'            # a connection the baseline does not allow
  Console: http://127.0.0.1:$HTTP_PORT/   user admin, password $(cat backend/admin.password)
           (kept in $FLEET/backend/admin.password; an API token for scripts in backend/api.token)
  Query:  $BACKEND alerts --config $FLEET/backend/backend.toml
          $BACKEND devices --config $FLEET/backend/backend.toml
          curl -s -H "Authorization: Bearer \$(cat $FLEET/backend/api.token)" http://127.0.0.1:$HTTP_PORT/api/alerts
  Logs:   $FLEET/{agent/agent.log,backend/backend.log,broker/mosquitto.log}.  Ctrl-C stops everything.

EOF
# Until Ctrl-C, or until one of the programs dies.
while [ -z "$INTERRUPTED" ]; do
    for pid in "${PIDS[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "a fleet process stopped unexpectedly; see the logs in $FLEET"
            exit 1
        fi
    done
    sleep 0.5
done
exit 0
