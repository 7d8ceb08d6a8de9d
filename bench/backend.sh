#!/usr/bin/env bash
# Measures the fleet backend: the sustained ingest rate (alerts/s) of one `picket-backend serve`
# into SQLite and of two instances sharing the load (MQTT v5 shared subscription) into
# PostgreSQL, with a real Mosquitto and mutual TLS on loopback and several devices publishing
# at once (backend/examples/bench_publish.rs); then the latency of alert queries (CLI and HTTP
# API) over a SQLite store of STORE_ROWS alerts. Rewrites the "Backend" section of
# docs/PERFORMANCE.md.
#
# Usage: sudo bench/backend.sh [ALERTS] [STORE_ROWS]   (defaults: 10000 1000000)
#        sudo bench/backend.sh --smoke                 (a few seconds: checks that it still runs)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
    SMOKE=1
    shift
fi
ALERTS="${1:-10000}"
ROWS="${2:-1000000}"
DEVICES=10
RUNS=7
DEADLINE=90
if [ "$SMOKE" = 1 ]; then ALERTS=200; ROWS=5000; DEVICES=2; RUNS=3; DEADLINE=30; fi
WORK="$(mktemp -d /var/tmp/picket-bench-backend.XXXXXX)"
PGDIR="" PGBIN="" BROKER="" SERVERS=""
cleanup() {
    for p in $SERVERS $BROKER; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$PGDIR" ]; then
        (cd "$PGDIR" && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop) >/dev/null 2>&1 || true
        rm -rf "$PGDIR"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PROFILE=release
[ "$SMOKE" = 1 ] && PROFILE=dev
cargo build --locked --package picket-backend --bins --example bench_publish \
    $([ "$PROFILE" = release ] && echo --release) >&2
OUT="${CARGO_TARGET_DIR:-$PWD/target}/$([ "$PROFILE" = release ] && echo release || echo debug)"
BACKEND="$OUT/picket-backend"
PUBLISH="$OUT/examples/bench_publish"
for tool in mosquitto openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL is missing: run scripts/setup.sh" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A development PKI: CA, broker (localhost), backend (CN picket-backend) and one certificate per
# device (CN = device id, which the broker takes as the user name for the ACL).
. scripts/dev-pki.sh
cd "$WORK"
mkdir devices
pki_ca . bench-ca 2
pki_cert . broker localhost server 2
pki_cert . backend picket-backend client 2
for i in $(seq "$DEVICES"); do
    id=$(printf 'bench-%04d' "$i")
    pki_cert . "devices/$id" "$id" client 2
done

# Mosquitto configured as serve's managed broker configures it (certificate CN as user name, per-device ACL),
# with room for the whole burst in the queue of a slow subscriber (the default, 1000 beyond
# the backend's receive maximum of 256, would drop what the backend has not taken yet; 0, no
# limit, makes Mosquitto 2.0.11 drop connections, see docs/BACKEND.md).
PORT=$(free_port)
# The ACL is the managed broker's, from the backend's own generator.
"$BACKEND" broker-acl picket-backend > acl
cat > mosquitto.conf <<EOF
user root
per_listener_settings false
listener $PORT 127.0.0.1
cafile $WORK/ca.pem
certfile $WORK/broker.pem
keyfile $WORK/broker.key
require_certificate true
use_identity_as_username true
acl_file $WORK/acl
persistence false
max_queued_messages 1000000
log_dest file $WORK/mosquitto.log
EOF
mosquitto -c mosquitto.conf >/dev/null 2>&1 &
BROKER=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
done

# Each part has its own client ids and share group: a stopped instance's session (its
# subscriptions and the messages queued for it) outlives it.
config() { # FILE CLIENT_ID SHARE_GROUP STORE_LINE [HTTP_PORT]
    cat > "$1" <<EOF
[mqtt]
host = "localhost"
port = $PORT
client_id = "$2"
share_group = "$3"
ca = "$WORK/ca.pem"
cert = "$WORK/backend.pem"
key = "$WORK/backend.key"

[store]
$4
EOF
    [ -z "${5:-}" ] || printf '\n[http]\nlisten = "127.0.0.1:%s"\n' "$5" >> "$1"
}
serve() { # CONFIG LOG: starts an instance, returns once it is subscribed
    "$BACKEND" serve --config "$1" 2> "$2" &
    SERVERS="$SERVERS $!"
    local deadline=$((SECONDS + 60))
    until grep -qs "subscribed to" "$2"; do
        [ $SECONDS -lt $deadline ] || { echo "the backend did not subscribe:" >&2; tail -5 "$2" >&2; exit 1; }
        sleep 0.1
    done
}
stop_servers() {
    for p in $SERVERS; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    SERVERS=""
}
cpu() { # PID...: user + system seconds used so far
    local ticks=0
    for p in "$@"; do ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}
ingest() { # STORE_ARGS...: publishes, waits (at most DEADLINE s), sets RATE PUBRATE SECS STORED
    local result
    result=$("$PUBLISH" --host localhost --port "$PORT" --ca ca.pem --certs devices \
        --devices "$DEVICES" --alerts "$ALERTS" --timeout 30 --deadline "$DEADLINE" "$@")
    read -r RATE PUBRATE SECS STORED < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
span = max(1, r["last_received_ms"] - r["first_publish_ms"]) / 1000
pub = max(1, r["published_ms"] - r["first_publish_ms"]) / 1000
print("%.0f %.0f %.1f %d" % (r["stored"] / span, r["published"] / pub, span, r["stored"]))' "$result")
    [ "$STORED" -gt 0 ] || { echo "nothing was stored" >&2; exit 1; }
}
pct() { awk -v c="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? 100 * c / s : 0) }'; }

# 1. SQLite, one instance.
config sqlite.toml bench-sqlite sqlite "sqlite = \"$WORK/ingest.db\""
serve sqlite.toml sqlite.log
SERVE_PID=${SERVERS# }
C0_B=$(cpu "$SERVE_PID") C0_M=$(cpu "$BROKER")
ingest --sqlite "$WORK/ingest.db"
SQ_RATE=$RATE SQ_PUB=$PUBRATE SQ_SECS=$SECS SQ_STORED=$STORED
SQ_RECONN=$(grep -c "reconnecting in" sqlite.log || true)
SQ_CPU_B=$(pct "$(awk -v a="$(cpu "$SERVE_PID")" -v b="$C0_B" 'BEGIN {print a - b}')" "$SECS")
SQ_CPU_M=$(pct "$(awk -v a="$(cpu "$BROKER")" -v b="$C0_M" 'BEGIN {print a - b}')" "$SECS")
stop_servers

# 2. PostgreSQL (a cluster made for the run, default durability: fsync and synchronous_commit
# on), two instances in one share group.
PGDIR="$(mktemp -d /var/tmp/picket-bench-pg.XXXXXX)"
chown postgres: "$PGDIR"
PGPORT=$(free_port)
(cd "$PGDIR" && runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -U picket --auth=trust -E UTF8 >/dev/null)
(cd "$PGDIR" && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" \
    -w -t 60 -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDIR" start >/dev/null)
"$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT" -U picket -d postgres -c "CREATE DATABASE picket"
PG="host=127.0.0.1 port=$PGPORT user=picket dbname=picket"
config pg1.toml bench-pg-1 pg "postgres = \"$PG\""
config pg2.toml bench-pg-2 pg "postgres = \"$PG\""
serve pg1.toml pg1.log
serve pg2.toml pg2.log
ingest --postgres "$PG"
PG_RATE=$RATE PG_PUB=$PUBRATE PG_SECS=$SECS PG_STORED=$STORED
PG_RECONN=$(( $(grep -c "reconnecting in" pg1.log || true) + $(grep -c "reconnecting in" pg2.log || true) ))
SHARE1=$(grep -c "alert bench-" pg1.log || true)
SHARE2=$(grep -c "alert bench-" pg2.log || true)
stop_servers
(cd "$PGDIR" && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null)
rm -rf "$PGDIR"
PGDIR=""

# 3. Queries over a store of ROWS alerts: `serve` creates the database, python3's sqlite3
# fills it in one transaction (100 devices q-0000..q-0099, ROWS/100 alerts each, received
# evenly over the last 24 hours, kinds in turn, one in 10007 `alerts_dropped`), then `serve`
# runs again for the HTTP API.
HTTP=$(free_port)
config query.toml bench-query query "sqlite = \"$WORK/query.db\"" "$HTTP"
serve query.toml query.log
stop_servers
T0=$(now)
python3 - "$WORK/query.db" "$ROWS" <<'PY'
import json, sqlite3, sys, time
path, rows = sys.argv[1], int(sys.argv[2])
kinds = ["unknown_executable", "modified_executable", "suspicious_exec", "unexpected_connection",
         "unexpected_listener", "protected_file_changed", "integrity_drift", "agent_tamper",
         "sensor_data_loss", "policy_rejected"]
devices, day = 100, 86_400_000
per = rows // devices
now = int(time.time() * 1000)
start = now - day
details = json.dumps({"sha256": "c79b1bd0c0c5c4d3a1f5e1dcb8f3f2b8e0c5f3b1a9d7e6c5b4a3928171605f4e"})
def alerts():
    n = 0
    for d in range(devices):
        dev = f"q-{d:04d}"
        for seq in range(1, per + 1):
            n += 1
            received = start + (seq * day) // per - d * 97
            exe = f"/usr/local/bin/tool{seq % 500}"
            process = json.dumps({"pid": 1000 + seq % 30000, "ppid": 1, "uid": 0, "exe": exe,
                                  "sha256": None, "argv": [exe, "--run"], "argv_dropped": 0,
                                  "ancestry": [{"pid": 1, "exe": "/sbin/init"}], "cgroup_id": 1})
            kind = "alerts_dropped" if n % 10007 == 0 else kinds[n % len(kinds)]
            yield (dev, seq, "4578ef3d-5c57-4a43-9ef6-2f1c1d4bd7a1", received - 40, received, kind,
                   "high", "executables", exe, details, 1, received - 40, received - 40, process,
                   "postcard")
db = sqlite3.connect(path)
db.execute("PRAGMA synchronous = OFF")
with db:
    db.executemany("INSERT INTO alerts (device_id, seq, boot_id, time_ms, received_ms, kind, severity,"
                   " rule, path, details, count, first_ms, last_ms, process, format)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", alerts())
    db.executemany("INSERT INTO devices (device_id, first_seen_ms, last_seen_ms) VALUES (?, ?, ?)",
                   [(f"q-{d:04d}", start, now) for d in range(devices)])
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
PY
FILL_SECS=$(awk -v t="$(( $(now) - T0 ))" 'BEGIN { printf "%.1f", t / 1e9 }')
FILL_RATE=$(awk -v s="$FILL_SECS" -v n="$ROWS" 'BEGIN { printf "%.0f", n / s }')
serve query.toml query.log
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HTTP/api/devices" >/dev/null && break
    sleep 0.1
done

count() { python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$1"; }
timed() { # EXPECTED_COUNT COMMAND...: median wall time in ms of RUNS runs
    local times="" t0 n
    for _ in $(seq "$RUNS"); do
        t0=$(now)
        "${@:2}" > q.json
        times="$times $(( ($(now) - t0) / 1000 ))"
        n=$(count q.json)
        # One may have left the last hour since it was counted.
        [ "$n" -le "$1" ] && [ "$n" -ge $(($1 - 1)) ] ||
            { echo "expected $1 alerts from ${*:2}, got $n" >&2; exit 1; }
    done
    awk -v us="$(med "$times")" 'BEGIN { printf "%.1f", us / 1000 }'
}
Q="$BACKEND alerts --db $WORK/query.db --limit 100 --json"
expect() { # WHERE: how many alerts a query with --limit 100 must give
    python3 -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(min(100, db.execute("SELECT count(*) FROM alerts WHERE " + sys.argv[2]).fetchone()[0]))' \
        "$WORK/query.db" "$1"
}
HOUR="received_ms >= (strftime('%s', 'now') - 3600) * 1000"
N_DEV=$(expect "device_id = 'q-0042' AND $HOUR")
N_KIND=$(expect "kind = 'suspicious_exec' AND $HOUR")
RARE=$(expect "kind = 'alerts_dropped' AND $HOUR")
Q_DEV=$(timed "$N_DEV" $Q --device q-0042 --since 1h)
Q_KIND=$(timed "$N_KIND" $Q --kind suspicious_exec --since 1h)
Q_RARE=$(timed "$RARE" $Q --kind alerts_dropped --since 1h)
Q_ALL=$(timed 100 $Q)
Q_HTTP=$(timed "$N_DEV" curl -sf "http://127.0.0.1:$HTTP/api/alerts?device=q-0042&since=1h&limit=100")
Q_HTTP_RARE=$(timed "$RARE" curl -sf "http://127.0.0.1:$HTTP/api/alerts?kind=alerts_dropped&since=1h&limit=100")
DBSIZE=$(du -m "$WORK/query.db" | cut -f1)
stop_servers
cd - >/dev/null

TABLE="| measure | value |
| --- | --- |
| ingest, SQLite, 1 instance | $SQ_RATE alerts/s ($SQ_STORED of $ALERTS stored in $SQ_SECS s; $SQ_RECONN reconnections) |
| ingest, PostgreSQL, 2 instances sharing the load | $PG_RATE alerts/s ($PG_STORED of $ALERTS stored in $PG_SECS s, shares $SHARE1 / $SHARE2; $PG_RECONN reconnections) |
| publishers → broker alone (QoS 1 acknowledged), SQLite run / PostgreSQL run | $SQ_PUB / $PG_PUB alerts/s |
| CPU during the SQLite ingest: \`serve\` / Mosquitto | $SQ_CPU_B % / $SQ_CPU_M % of one core |
| filling the query store: $ROWS alerts, python3 sqlite3, one transaction | $FILL_RATE alerts/s ($FILL_SECS s, $DBSIZE MiB) |
| \`alerts --device D --since 1h --limit 100 --json\` | $Q_DEV ms |
| \`alerts --kind suspicious_exec --since 1h --limit 100 --json\` (1 alert in 10) | $Q_KIND ms |
| \`alerts --kind alerts_dropped --since 1h --limit 100 --json\` (1 in 10007; $RARE in the last hour) | $Q_RARE ms |
| \`alerts --limit 100 --json\` (no filter) | $Q_ALL ms |
| \`GET /api/alerts?device=D&since=1h&limit=100\` | $Q_HTTP ms |
| \`GET /api/alerts?kind=alerts_dropped&since=1h&limit=100\` | $Q_HTTP_RARE ms |"
echo "$TABLE"
[ "$SMOKE" = 1 ] && exit 0
write_section "Backend" "## Backend

\`bench/backend.sh\` ($(machine)), $PROFILE build. The machine is shared with other
builds and its figures vary from run to run: read them as orders of magnitude.

Ingest: a real Mosquitto with mutual TLS on loopback (certificate CN as user name,
the same per-device ACL as \`serve\`'s managed broker), $DEVICES devices publishing $ALERTS Postcard alerts (QoS 1,
about 400 bytes each, with a process context) all at once from \`backend/examples/bench_publish.rs\`,
which then polls the store. Rate = alerts stored / time from the first publish to the latest
\`received_ms\` in the store. SQLite: one \`serve\`. PostgreSQL: a cluster started for the run
with its default durability (fsync, synchronous commit), two \`serve\` instances in one share
group (shares: alerts each stored).

Queries: a SQLite store of $ROWS alerts (100 devices, received evenly over the last 24 hours,
so \`--since 1h\` matches about 1 in 24) created by \`serve\` and filled by a python3 sqlite3
script with the backend's schema; median wall time of $RUNS runs, the CLI's including its
start and the opening of the database, the HTTP API's through curl with \`serve\` idle.
The ingest stops waiting for the store $DEADLINE s after the first publish, or when it has not
grown for 30 s: fewer alerts stored than published means the backend did not keep up.

$TABLE

What is slow, and why:

- **The ingest takes a burst.** \`serve\` announces an MQTT receive maximum of 256: the broker
  has at most that many messages in flight to it and queues the rest (which is why the broker
  needs a queue as large as the bursts, \`max_queued_messages\`, see docs/BACKEND.md). One task
  polls the connection without waiting for the store; a second stores everything received so
  far (up to 256) in one transaction and acknowledges it after the commit, through a request
  queue twice the receive maximum, which cannot fill. No reconnection in either run (before:
  19 alerts/s into SQLite, 113 into PostgreSQL, with 70 and 133 reconnections, when each
  message had its own transaction and a full acknowledgement queue dropped the connection).
- **SQLite keeps up with the publishers; PostgreSQL's commits are what is left.** Into SQLite
  the ingest stored the burst about 1 s after the devices had published it (in about 0.9 s),
  with \`serve\` using a bit over half a core (TLS, decoding, logging each alert, SQLite). Into PostgreSQL at its default durability, each batch's commit waits
  for a WAL flush (an fsync) on this machine's disk; two instances share the messages, so each
  commits its own smaller batches. More instances or \`synchronous_commit = off\` would trade
  durability or resources for rate; not measured here.
- **Alert queries read only what their filters select.** The \`WHERE\` clause has only the
  filters given, and the alerts are ordered \`received_ms DESC, device_id DESC, seq DESC\`,
  the order in which the indexes on \`received_ms\`, \`(device_id, received_ms)\` and
  \`(kind, received_ms)\` are read backwards (their entries end with the primary key), so a query
  reads its first \`--limit\` rows through the index of its filters and stops (the store tests
  check the plans with \`EXPLAIN QUERY PLAN\`). Before: every query read the whole store, about
  250 ms per million alerts whatever the filter. What is left of the CLI's time is mostly its
  own start and the opening of the database; the HTTP API's includes the JSON of 100 alerts.
  Filling the store is slower than before (three secondary indexes to maintain instead of one):
  the price of these queries on every insert."
