#!/usr/bin/env bash
# Measures `picket baseline scan` against `find | xargs -P sha256sum` on the same generated tree,
# cold and warm page cache, and the time to verify a signed policy of 10,000 entries. Both are
# run alternately for several rounds in the same run and reported as medians and ratios (this
# machine is shared and noisy: ratios, not absolute times). Records what it measures as
# samples; `xtask bench-report scan` prints the table and rewrites the "Integrity scan" section
# of docs/PERFORMANCE.md.
#
# Usage: sudo bench/scan.sh [FILES] [ROUNDS]      (defaults: 20000 files, 5 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

FILES="${1:-20000}"
ROUNDS="${2:-5}"
WORK="$(mktemp -d /var/tmp/picket-bench.XXXXXX)"
SAMPLES="$WORK/samples"
trap 'rm -rf "$WORK"' EXIT

build_picket
build_xtask
sample files "$FILES"
sample rounds "$ROUNDS"
sample nproc "$(nproc)"

echo "generating $FILES files of mixed sizes under $WORK/root" >&2
python3 - "$WORK/root" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
# Mostly small files, some medium, a few large: like a root filesystem.
sizes = [512] * 60 + [8 << 10] * 25 + [128 << 10] * 12 + [2 << 20] * 3
for i in range(n):
    d = os.path.join(root, "usr", "bin" if i % 2 else "lib", f"d{i % 200:03d}")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, f"f{i:06d}")
    with open(p, "wb") as f:
        f.write(random.randbytes(random.choice(sizes)))
    os.chmod(p, 0o755)
PY
sample bytes "$(du -sb "$WORK/root" | cut -f1)"

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || return 1; }

run_picket() { "$PICKET" baseline scan --root "$WORK/root" --out "$WORK/policy.toml" 2>/dev/null; }
run_sha256sum() {
    find "$WORK/root" -type f -print0 | xargs -0 -P"$(nproc)" -n 256 sha256sum >/dev/null
}

cold=yes
drop_caches || cold=no
sample cold "$cold"
for round in $(seq "$ROUNDS"); do
    for tool in picket sha256sum; do
        if [ "$cold" = yes ]; then
            drop_caches
            timed "cold_${tool}_ns" "run_$tool"
        fi
        "run_$tool"   # warm the cache
        timed "warm_${tool}_ns" "run_$tool"
    done
    echo "round $round/$ROUNDS done" >&2
done

# Verifying a signed policy of 10,000 file entries (process start included).
python3 - "$WORK/big.toml" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write('[metadata]\nname = "big"\ndevice_class = "bench"\nserial = 1\ncreated = "2026-11-22T00:00:00Z"\n')
    for i in range(10000):
        f.write(f'\n[[files.protected]]\npath = "/etc/f{i:05d}"\nsha256 = "{i:064x}"\n')
PY
"$PICKET" keygen --out "$WORK/k" >/dev/null
mkdir -p "$WORK/trust" && cp "$WORK/k.pub" "$WORK/trust/"
"$PICKET" policy sign --key "$WORK/k.key" --in "$WORK/big.toml" --out "$WORK/big.bundle" >/dev/null
for round in $(seq "$ROUNDS"); do
    timed verify_ns "$PICKET" policy verify --trust "$WORK/trust" "$WORK/big.bundle" >/dev/null
    timed version_ns "$PICKET" --version >/dev/null
done

bench_report scan
