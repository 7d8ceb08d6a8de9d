#!/usr/bin/env bash
# Measures the fleet backend: the sustained ingest rate (alerts/s) of one `picket-backend serve`
# into SQLite and of two instances sharing the load (MQTT v5 shared subscription) into
# PostgreSQL, with a real Mosquitto and mutual TLS on loopback and several devices publishing
# at once (backend/examples/bench_publish.rs); then the latency of alert queries (CLI and HTTP
# API) over a SQLite store of STORE_ROWS alerts, the server time of the console's requests over
# it and over a PostgreSQL store of PG_ROWS alerts (default: STORE_ROWS), and the time a live
# alert takes to reach an open `/api/events` stream. Records what it measures as samples;
# `xtask bench-report backend` makes the figures and rewrites the "Backend" section of
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
PG_ROWS="${PG_ROWS:-$ROWS}"
DEVICES=10
RUNS=7
DEADLINE=90
if [ "$SMOKE" = 1 ]; then ALERTS=200; ROWS=5000; PG_ROWS=5000; DEVICES=2; RUNS=3; DEADLINE=30; fi
WORK="$(mktemp -d /var/tmp/picket-bench-backend.XXXXXX)"
SAMPLES="$WORK/samples"
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
build_xtask
sample profile "$PROFILE"; sample alerts "$ALERTS"; sample rows "$ROWS"; sample pg_rows "$PG_ROWS"
sample devices "$DEVICES"; sample runs "$RUNS"; sample deadline "$DEADLINE"
for tool in mosquitto openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL is missing: run scripts/setup.sh" >&2; exit 1; }
free_port() { "$XTASK" probe free-port; }

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
cpu() { "$XTASK" probe cpu-seconds "$@"; } # PID...: user + system seconds used so far
ingest() { # KEY STORE_ARGS...: publishes, waits (at most DEADLINE s), records the result as KEY
    local result
    result=$("$PUBLISH" --host localhost --port "$PORT" --ca ca.pem --certs devices \
        --devices "$DEVICES" --alerts "$ALERTS" --timeout 30 --deadline "$DEADLINE" "${@:2}")
    sample "$1" "$result"
    local stored published
    stored=$("$XTASK" probe json - stored <<< "$result")
    published=$("$XTASK" probe json - published <<< "$result")
    [ "$stored" -gt 0 ] || { echo "nothing was stored" >&2; exit 1; }
    # A smoke run is small enough that every alert (ALERTS in all, shared by the devices) must
    # be published and stored in time.
    local want=$((ALERTS / DEVICES * DEVICES))
    if [ "$SMOKE" = 1 ] && { [ "$published" -ne "$want" ] || [ "$stored" -ne "$published" ]; }; then
        echo "smoke run: $stored of $published alerts stored ($want to publish)" >&2
        exit 1
    fi
}

# The console's requests: the server's time of each (curl's time to the first byte of the
# response less its time to the end of the request, on loopback), RUNS times, recorded with the
# key prefix $1. The HTTP API at port HTTP, with the header AUTH.
api() { # KEY PATH
    local t
    for _ in $(seq "$RUNS"); do
        t=$(curl -sf -o api.json -H "$AUTH" -w '%{time_pretransfer} %{time_starttransfer}' \
            "http://127.0.0.1:$HTTP$2") || { echo "GET $2 failed" >&2; exit 1; }
        sample "$1" "$(awk '{printf "%d", ($2 - $1) * 1e9}' <<< "$t")"
    done
}
console() { # PREFIX
    api "${1}api_overview_ns" "/api/overview"
    api "${1}api_first_ns" "/api/alerts?limit=50"
    api "${1}api_device_ns" "/api/alerts?limit=50&device=q-0042"
    api "${1}api_kind_ns" "/api/alerts?limit=50&kind=alerts_dropped"
    api "${1}api_severity_ns" "/api/alerts?limit=50&severity=critical"
    api "${1}api_text_ns" "/api/alerts?limit=50&q=tool42"
    api "${1}api_triage_ns" "/api/alerts?limit=50&triage=acknowledged"
    api "${1}api_open_ns" "/api/alerts?limit=50&triage=open"
    local last
    last=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[-1]["id"])' api.json)
    api "${1}api_before_ns" "/api/alerts?limit=50&triage=open&before=$last"
    api "${1}api_alert_ns" "/api/alerts/$last"
}

# 1. SQLite, one instance.
config sqlite.toml bench-sqlite sqlite "sqlite = \"$WORK/ingest.db\""
serve sqlite.toml sqlite.log
SERVE_PID=${SERVERS# }
sample serve_cpu_before "$(cpu "$SERVE_PID")"
sample broker_cpu_before "$(cpu "$BROKER")"
ingest sqlite_ingest --sqlite "$WORK/ingest.db"
sample sqlite_reconnections "$(grep -c "reconnecting in" sqlite.log || true)"
sample serve_cpu_after "$(cpu "$SERVE_PID")"
sample broker_cpu_after "$(cpu "$BROKER")"
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
ingest pg_ingest --postgres "$PG"
for log in pg1.log pg2.log; do
    sample pg_reconnections "$(grep -c "reconnecting in" "$log" || true)"
    sample share "$(grep -c "alert bench-" "$log" || true)"
done
stop_servers
# 2b. The console's requests over a PostgreSQL store of PG_ROWS alerts, the same as the SQLite
# store of part 3 (made by SQL there rather than python3).
HTTP=$(free_port)
"$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT" -U picket -d postgres -c "CREATE DATABASE picket_query"
PG_QUERY="host=127.0.0.1 port=$PGPORT user=picket dbname=picket_query"
config pgq.toml bench-pg-query pgq "postgres = \"$PG_QUERY\"" "$HTTP"
"$BACKEND" user add bench --role viewer --generate --config pgq.toml >/dev/null 2>&1
AUTH="Authorization: Bearer $("$BACKEND" user token bench --config pgq.toml)"
pg_fill() {
    "$PGBIN/psql" -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U picket -d picket_query \
        -v rows="$PG_ROWS" <<'SQL'
BEGIN;
INSERT INTO alerts (device_id, seq, boot_id, time_ms, received_ms, kind, severity, rule, path,
        details, count, first_ms, last_ms, process, format)
SELECT 'q-' || lpad(d::text, 4, '0'), s, '4578ef3d-5c57-4a43-9ef6-2f1c1d4bd7a1', r - 40, r,
    CASE WHEN n % 10007 = 0 THEN 'alerts_dropped' ELSE (ARRAY['unknown_executable',
        'modified_executable', 'suspicious_exec', 'unexpected_connection', 'unexpected_listener',
        'protected_file_changed', 'integrity_drift', 'agent_tamper', 'sensor_data_loss',
        'policy_rejected'])[n % 10 + 1] END,
    (ARRAY['medium', 'high', 'medium', 'high', 'critical'])[n % 7 % 5 + 1], 'executables',
    '/usr/local/bin/tool' || (s % 500),
    '{"sha256": "c79b1bd0c0c5c4d3a1f5e1dcb8f3f2b8e0c5f3b1a9d7e6c5b4a3928171605f4e"}', 1, r - 40,
    r - 40, format('{"pid": %s, "ppid": 1, "uid": 0, "exe": "/usr/local/bin/tool%s", "sha256": null, '
        '"argv": ["/usr/local/bin/tool%s", "--run"], "argv_dropped": 0, "ancestry": [{"pid": 1, '
        '"exe": "/sbin/init"}], "cgroup_id": 1}', 1000 + s % 30000, s % 500, s % 500), 'postcard'
FROM (SELECT (extract(epoch FROM now()) * 1000)::bigint AS now, :rows / 100 AS per) AS c,
    generate_series(0, 99) AS d, LATERAL generate_series(1, c.per) AS s,
    LATERAL (SELECT c.now - 86400000 + (s * 86400000::bigint) / c.per - d * 97 AS r,
                    d * c.per + s AS n) AS x
ORDER BY d, s;
INSERT INTO devices (device_id, first_seen_ms, last_seen_ms, stored_alerts)
    SELECT device_id, min(received_ms), max(received_ms), count(*) FROM alerts GROUP BY device_id;
INSERT INTO triage (alert_id, state, note, by_user, time_ms)
    SELECT id, 'acknowledged', '', 'bench', received_ms FROM alerts WHERE id % 1000 = 0;
INSERT INTO alert_totals (device_id, severity, alerts)
    SELECT device_id, severity, count(*) FROM alerts GROUP BY device_id, severity;
INSERT INTO alert_hours (hour_ms, device_id, severity, kind, alerts)
    SELECT received_ms - received_ms % 3600000, device_id, severity, kind, count(*)
    FROM alerts GROUP BY received_ms - received_ms % 3600000, device_id, severity, kind;
COMMIT;
VACUUM ANALYZE;
SQL
}
timed pg_fill_ns pg_fill
serve pgq.toml pgq.log
for _ in $(seq 100); do
    curl -sf -H "$AUTH" "http://127.0.0.1:$HTTP/api/devices" >/dev/null && break
    sleep 0.1
done
console pg_
stop_servers
(cd "$PGDIR" && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null)
rm -rf "$PGDIR"
PGDIR=""

# 3. Queries over a store of ROWS alerts: `serve` creates the database, python3's sqlite3
# fills it in one transaction (100 devices q-0000..q-0099, ROWS/100 alerts each, received
# evenly over the last 24 hours, kinds in turn, one in 10007 `alerts_dropped`, severities in
# turn with `critical` one in 7, one alert in 1000 acknowledged), then `serve` runs again for
# the HTTP API.
HTTP=$(free_port)
config query.toml bench-query query "sqlite = \"$WORK/query.db\"" "$HTTP"
serve query.toml query.log
stop_servers
fill() {
    python3 - "$WORK/query.db" "$ROWS" <<'PY'
import json, sqlite3, sys, time
path, rows = sys.argv[1], int(sys.argv[2])
kinds = ["unknown_executable", "modified_executable", "suspicious_exec", "unexpected_connection",
         "unexpected_listener", "protected_file_changed", "integrity_drift", "agent_tamper",
         "sensor_data_loss", "policy_rejected"]
severities = ["medium", "high", "medium", "high", "critical"]
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
            severity = severities[n % 7 % len(severities)]
            yield (dev, seq, "4578ef3d-5c57-4a43-9ef6-2f1c1d4bd7a1", received - 40, received, kind,
                   severity, "executables", exe, details, 1, received - 40, received - 40,
                   process, "postcard")
db = sqlite3.connect(path)
db.execute("PRAGMA synchronous = OFF")
with db:
    db.executemany("INSERT INTO alerts (device_id, seq, boot_id, time_ms, received_ms, kind, severity,"
                   " rule, path, details, count, first_ms, last_ms, process, format)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", alerts())
    db.executemany("INSERT INTO devices (device_id, first_seen_ms, last_seen_ms, stored_alerts)"
                   " VALUES (?, ?, ?, ?)", [(f"q-{d:04d}", start, now, per) for d in range(devices)])
    # One alert in 1000 triaged (acknowledged), as the console would.
    db.execute("INSERT INTO triage (alert_id, state, note, by_user, time_ms)"
               " SELECT id, 'acknowledged', '', 'bench', received_ms FROM alerts WHERE id % 1000 = 0")
    # The overview's counts, as the backend keeps them.
    db.execute("INSERT INTO alert_totals (device_id, severity, alerts)"
               " SELECT device_id, severity, count(*) FROM alerts GROUP BY device_id, severity")
    db.execute("INSERT INTO alert_hours (hour_ms, device_id, severity, kind, alerts)"
               " SELECT received_ms - received_ms % 3600000, device_id, severity, kind, count(*)"
               " FROM alerts GROUP BY 1, 2, 3, 4")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
PY
}
timed fill_ns fill
# The HTTP API needs a user: a viewer, and an API token of it for curl.
"$BACKEND" user add bench --role viewer --generate --db "$WORK/query.db" >/dev/null 2>&1
TOKEN=$("$BACKEND" user token bench --db "$WORK/query.db")
AUTH="Authorization: Bearer $TOKEN"
serve query.toml query.log
for _ in $(seq 100); do
    curl -sf -H "$AUTH" "http://127.0.0.1:$HTTP/api/devices" >/dev/null && break
    sleep 0.1
done

query() { # KEY EXPECTED_COUNT COMMAND...: records the wall time of RUNS runs as KEY
    for _ in $(seq "$RUNS"); do
        timed "$1" "${@:3}" > q.json
        # One may have left the last hour since it was counted.
        "$XTASK" probe json-count q.json --expect "$2" >/dev/null ||
            { echo "unexpected count from ${*:3}" >&2; exit 1; }
    done
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
sample rare "$RARE"
query q_dev_ns "$N_DEV" $Q --device q-0042 --since 1h
query q_kind_ns "$N_KIND" $Q --kind suspicious_exec --since 1h
query q_rare_ns "$RARE" $Q --kind alerts_dropped --since 1h
query q_all_ns 100 $Q
query q_http_ns "$N_DEV" curl -sf -H "$AUTH" "http://127.0.0.1:$HTTP/api/alerts?device=q-0042&since=1h&limit=100"
query q_http_rare_ns "$RARE" curl -sf -H "$AUTH" "http://127.0.0.1:$HTTP/api/alerts?kind=alerts_dropped&since=1h&limit=100"
console ""

# Live: LIVE alerts published one at a time (JSON, QoS 1, by mosquitto_pub with a device's
# certificate), each once the previous one has reached an open `/api/events` stream and after a
# random pause of up to one poll of the stream (so that the publications do not follow the
# polls); the time from just before mosquitto_pub starts (its connection and TLS handshake
# included) to the event on the stream.
LIVE=100
[ "$SMOKE" = 1 ] && LIVE=20
python3 - "$HTTP" "$TOKEN" "$PORT" "$LIVE" > live.txt <<'PY'
import json, queue, random, subprocess, sys, threading, time
http, token, port, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stream = subprocess.Popen(["curl", "-sfN", "-H", f"Authorization: Bearer {token}",
                           f"http://127.0.0.1:{http}/api/events"], stdout=subprocess.PIPE, text=True)
seen = queue.Queue()
def read():
    for line in stream.stdout:
        if line.startswith("data:"):
            row = json.loads(line[5:])
            if row.get("device_id") == "bench-0001":
                seen.put((time.monotonic(), row["seq"]))
threading.Thread(target=read, daemon=True).start()
time.sleep(1)  # the stream is open before the first alert
base = int(time.time())
for i in range(n):
    seq = base * 1000 + i
    now = int(time.time() * 1000)
    alert = {"v": 1, "device_id": "bench-0001", "body": {
        "seq": seq, "boot_id": "4578ef3d-5c57-4a43-9ef6-2f1c1d4bd7a1", "time_ms": now,
        "kind": "suspicious_exec", "severity": "high", "rule": "live", "path": "/tmp/live",
        "details": {}, "count": 1, "first_ms": now, "last_ms": now, "process": None}}
    time.sleep(random.random() * 0.25)
    t0 = time.monotonic()
    subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", port, "-q", "1",
                    "--cafile", "ca.pem", "--cert", "devices/bench-0001.pem",
                    "--key", "devices/bench-0001.key", "-t", "picket/v1/bench-0001/alert",
                    "-m", json.dumps(alert)], check=True)
    while True:
        t, s = seen.get(timeout=10)
        if s == seq:
            break
    print(f"{(t - t0) * 1e9:.0f}")
stream.kill()
PY
while read -r ns; do sample live_ns "$ns"; done < live.txt
sample db_mib "$(du -m "$WORK/query.db" | cut -f1)"
stop_servers
cd - >/dev/null

if [ "$SMOKE" = 1 ]; then
    bench_report backend --no-write
else
    bench_report backend
fi

