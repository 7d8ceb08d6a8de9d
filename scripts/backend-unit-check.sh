#!/usr/bin/env bash
# Checks the fleet backend's systemd unit (backend/dist/picket-backend.service) and its user
# (backend/dist/picket-backend.sysusers):
#
#  1. `systemd-analyze verify` accepts the unit; `systemd-analyze security` rates its exposure
#     below 2.0 ("OK"; it is 1.6, docs/BACKEND.md, "Running as a service").
#  2. systemd-sysusers makes the user from the sysusers file.
#  3. The real backend, with a managed Mosquitto, an SQLite store and the HTTP API, started the
#     way the unit starts it, as far as this machine allows without systemd as PID 1: as the
#     user picket-backend, no capability (bounding, inheritable, ambient), NoNewPrivileges, in
#     a mount namespace of its own with / read-only but the state directory (ProtectSystem=
#     strict), /home and /root empty (ProtectHome), a private /tmp, a /dev of null, zero,
#     random and urandom (PrivateDevices), and a /proc showing only its own processes
#     (ProtectProc=invisible, ProcSubset=pid); the private keys the user's, 0600, the directory
#     and configuration root:picket-backend, 0750 and 0640. Its users
#     are added and a token made the same way. Traced (strace): the backend subscribes, the
#     broker listens, the API answers with the token, both processes run as the user, and every
#     system call they made is one SystemCallFilter= allows (@system-service without
#     @privileged and @resources, as systemd-analyze lists them).
#     Not reproduced here: PrivateUsers, PrivateIPC, the address-family and namespace
#     restrictions, MemoryDenyWriteExecute and the filter itself (systemd applies them).
#  4. `serve` as root says so (the warning names the unit); as the user it does not.
#
# Needs root (the user, the namespaces). Builds picket-backend unless BACKEND is set to one.
# Takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
unit=$root/backend/dist/picket-backend.service
sysusers=$root/backend/dist/picket-backend.sysusers
user=picket-backend
max_exposure=2.0

log() { printf '\033[1m[backend-unit]\033[0m %s\n' "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    log "creates the user picket-backend and mount namespaces: run this as root (sudo $0)"
    exit 1
fi
for tool in systemd-analyze systemd-sysusers setpriv unshare strace mosquitto curl openssl; do
    command -v "$tool" >/dev/null || fail "$tool is missing (scripts/setup.sh installs it)"
done
if [ -z "${BACKEND:-}" ]; then
    cargo build --locked --package picket-backend
    BACKEND=${CARGO_TARGET_DIR:-$root/target}/debug/picket-backend
fi
BACKEND=$(realpath "$BACKEND")

work=$(mktemp -d /var/tmp/picket-backend-unit.XXXXXX)
chmod 755 "$work"
serve_pid=
cleanup() {
    if [ -n "$serve_pid" ]; then
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# 1. The unit as installed, with ExecStart pointing at this binary.
sed "s|/usr/local/bin/picket-backend|$BACKEND|" "$unit" >"$work/picket-backend.service"
systemd-analyze verify "$work/picket-backend.service" 2>"$work/verify.err" ||
    fail "systemd-analyze verify: $(cat "$work/verify.err")"
[ -s "$work/verify.err" ] && fail "systemd-analyze verify warns: $(cat "$work/verify.err")"
rating=$(systemd-analyze security --offline=true "$work/picket-backend.service" | tail -n1)
exposure=$(sed -n 's/^.*Overall exposure level for [^:]*: \([0-9.]*\) .*$/\1/p' <<<"$rating")
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e != "" && e + 0 < m + 0) }' ||
    fail "the unit's exposure level is ${exposure:-unreadable} ($rating), $max_exposure or more: it lost hardening"
log "systemd-analyze verify passes; $rating"
for opt in 'User=picket-backend' 'CapabilityBoundingSet=' 'AmbientCapabilities=' 'NoNewPrivileges=yes' \
    'ProtectSystem=strict' 'StateDirectory=picket-backend' 'SystemCallFilter=@system-service'; do
    grep -qx "$opt" "$unit" || fail "the unit lacks $opt, which this check reproduces"
done

# 2. The user, as systemd-sysusers makes it at boot.
systemd-sysusers "$sysusers"
id "$user" >/dev/null || fail "systemd-sysusers did not make the user $user"
uid=$(id -u "$user")
[ "$uid" -ne 0 ] || fail "$user is root"

# 3. Keys and state as docs/BACKEND.md says: /etc/picket-backend root:picket-backend 0750,
# the private keys picket-backend's 0600 (the backend refuses keys others can read), the
# configuration root:picket-backend 0640; /var/lib/picket-backend the user's, 0700
# (StateDirectory=).
# shellcheck source=scripts/dev-pki.sh
. "$root/scripts/dev-pki.sh"
etc=$work/etc/picket-backend state=$work/var/lib/picket-backend
pki_ca "$etc" "backend unit check CA" 2
pki_cert "$etc" broker localhost server 2
pki_cert "$etc" backend picket-backend client 2
rm "$etc/ca.key"
chown -R "root:$user" "$etc"
chmod 0750 "$etc"
chmod 0644 "$etc"/*.pem
chown "$user:$user" "$etc"/*.key
chmod 0600 "$etc"/*.key
mkdir -p "$state"
chown "$user:$user" "$state"
chmod 0700 "$state"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
broker_port=$(free_port)
http_port=$(free_port)
cat >"$etc/backend.toml" <<EOF
[mqtt]
host = "localhost"
port = $broker_port
client_id = "picket-backend"
ca = "$etc/ca.pem"
cert = "$etc/backend.pem"
key = "$etc/backend.key"

[store]
sqlite = "$state/picket.db"

[http]
listen = "127.0.0.1:$http_port"

[broker]
listen = "127.0.0.1:$broker_port"
ca = "$etc/ca.pem"
cert = "$etc/broker.pem"
key = "$etc/broker.key"
dir = "$state/broker"
EOF
chown "root:$user" "$etc/backend.toml"
chmod 0640 "$etc/backend.toml"

# Runs picket-backend ARGS... as the unit would (see above), through unshare: SANDBOX ARGS...
# The shell's pid, which the backend's becomes, in $work/pid. The host's device nodes are
# bound in $work/dev, reachable once /dev is covered.
mkdir -p "$work/dev"
for n in null zero random urandom; do
    touch "$work/dev/$n"
    mount --bind "/dev/$n" "$work/dev/$n"
done
umount_dev() { for n in null zero random urandom; do umount "$work/dev/$n" 2>/dev/null || true; done; }
trap 'umount_dev; cleanup' EXIT
cat >"$work/sandbox.sh" <<'EOF_SANDBOX'
set -e
state=$1 work=$2 user=$3
shift 3
echo $$ >"$work/pid"
mount --bind "$state" "$state"
mount -o remount,bind,ro /
mount -t tmpfs -o mode=0755 tmpfs /home
mount -t tmpfs -o mode=0700 tmpfs /root
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /dev
for n in null zero random urandom; do
    touch "/dev/$n"
    mount --bind "$work/dev/$n" "/dev/$n"
done
mount -o remount,bind,ro /dev
mount -t proc -o hidepid=invisible,subset=pid proc /proc
exec setpriv --reuid "$user" --regid "$user" --init-groups --bounding-set -all \
    --inh-caps -all --ambient-caps -all --no-new-privs -- "$@"
EOF_SANDBOX
sandbox=(unshare --mount --propagation private -- sh "$work/sandbox.sh" "$state" "$work" "$user" "$BACKEND")

"${sandbox[@]}" --config "$etc/backend.toml" user add admin --role admin --generate \
    >"$work/password" 2>"$work/user.err" || fail "user add in the sandbox: $(cat "$work/user.err")"
"${sandbox[@]}" --config "$etc/backend.toml" user token admin >"$work/token" 2>>"$work/user.err" ||
    fail "user token in the sandbox: $(cat "$work/user.err")"
[ "$(stat -c %U "$state/picket.db")" = "$user" ] || fail "the store is not the user's: $(stat -c %U "$state/picket.db")"

strace -f -qq -o "$work/trace" -- "${sandbox[@]}" --config "$etc/backend.toml" serve >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
for _ in $(seq 600); do
    grep -q 'subscribed to' "$work/serve.err" && break
    kill -0 "$serve_pid" 2>/dev/null || fail "serve exited in the sandbox: $(tail -n 20 "$work/serve.err")"
    sleep 0.1
done
grep -q 'subscribed to' "$work/serve.err" || fail "serve did not subscribe within 60 s: $(tail -n 20 "$work/serve.err")"
grep -q 'running as root' "$work/serve.err" && fail "serve as $user warns about root"
backend_pid=$(cat "$work/pid")
broker_pid=$(cat "$state/broker/mosquitto.pid")
for pid in "$backend_pid" "$broker_pid"; do
    read -r _ r e _ < <(grep '^Uid:' "/proc/$pid/status")
    [ "$r" = "$uid" ] && [ "$e" = "$uid" ] ||
        fail "process $pid ($(cat "/proc/$pid/comm")) runs as uid $r/$e, not $user ($uid)"
    grep -q '^CapBnd:\s*0000000000000000$' "/proc/$pid/status" ||
        fail "process $pid has a capability bounding set: $(grep '^Cap' "/proc/$pid/status")"
    grep -q '^NoNewPrivs:\s*1$' "/proc/$pid/status" || fail "process $pid may gain privileges"
done
code=$(curl -s -o "$work/devices.json" -w '%{http_code}' \
    -H "Authorization: Bearer $(cat "$work/token")" "http://127.0.0.1:$http_port/api/devices")
[ "$code" = 200 ] || fail "GET /api/devices answered $code: $(cat "$work/devices.json")"
kill -TERM "$backend_pid"
wait "$serve_pid" || fail "serve did not stop cleanly: $(tail -n 20 "$work/serve.err")"
serve_pid=
kill -0 "$broker_pid" 2>/dev/null && fail "the broker outlived serve"

# Every system call made from the backend's exec on (its and Mosquitto's) is allowed.
calls() { # GROUP: its system calls, the groups it names expanded
    local entry
    for entry in $(systemd-analyze syscall-filter "$1" | sed -n 's/^    \([@a-z0-9_-]*\)$/\1/p'); do
        case $entry in
        @*) calls "$entry" ;;
        *) echo "$entry" ;;
        esac
    done
}
allowed() { calls "$1" | sort -u; }
exec_line=$(grep -n "execve(\"$BACKEND\"" "$work/trace" | tail -n 1 | cut -d: -f1)
[ -n "$exec_line" ] || fail "no exec of the backend in the trace"
tail -n +"$exec_line" "$work/trace" |
    sed -n 's/^[0-9][0-9]*  *\(<\.\.\. \)\{0,1\}\([a-z0-9_][a-z0-9_]*\)[( ].*/\2/p' | sort -u >"$work/used"
comm -23 <(allowed @system-service) <(cat <(allowed @privileged) <(allowed @resources) | sort -u) >"$work/allowed"
denied=$(comm -23 "$work/used" "$work/allowed" | tr '\n' ' ')
[ -z "$denied" ] || fail "system calls the unit's SystemCallFilter= denies: $denied"
log "the backend ran as $user without capabilities in the unit's sandbox: its broker listened, it subscribed, the API answered; $(wc -l <"$work/used") distinct system calls, all allowed"

# 4. As root: the warning, naming the unit (a store that cannot be created ends it there).
if "$BACKEND" --config "$etc/backend.toml" --db /dev/null/picket.db serve 2>"$work/root.err"; then
    fail "serve with an impossible store succeeded"
fi
grep 'running as root' "$work/root.err" | grep -q 'picket-backend.service' ||
    fail "serve as root does not warn naming the unit: $(cat "$work/root.err")"
log "serve as root warns: $(grep -o 'running as root.*' "$work/root.err")"
echo "backend unit: passed"
