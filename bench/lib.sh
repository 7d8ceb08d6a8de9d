# Shared by the benchmark scripts. They drive the outside tools (the agent, Mosquitto,
# PostgreSQL, OpenSSL, the page cache) and record what they measure as samples, one `KEY VALUE`
# line each; `xtask bench-report` (xtask/) makes the figures from them (medians, ratios,
# percentiles, verdicts) and rewrites the benchmark's sections of docs/PERFORMANCE.md, and
# `xtask probe` takes the readings that need more than a shell (/proc, logs, JSON).
# Source it: `. bench/lib.sh`, then set SAMPLES to a file in the run's work directory.

now() { date +%s%N; }

# Builds xtask (once; a no-op when it is up to date) and sets XTASK to it.
build_xtask() {
    cargo build --locked --package xtask >&2
    XTASK="${CARGO_TARGET_DIR:-$PWD/target}/debug/xtask"
}

# Records a sample: KEY VALUE...
sample() { echo "$*" >> "$SAMPLES"; }

# Runs COMMAND... and records its wall time in nanoseconds under KEY.
timed() { # KEY COMMAND...
    local key=$1 t0
    shift
    t0=$(now)
    "$@"
    sample "$key" "$(($(now) - t0))"
}

# Makes the figures of benchmark $1 (agent, scan, report, backend) from the samples, prints them
# and rewrites its sections of docs/PERFORMANCE.md, or of $PICKET_BENCH_DOC, which the smoke
# runs point at a copy. `--no-write` as $2: print only.
bench_report() {
    "$XTASK" bench-report "$1" --samples "$SAMPLES" --doc "${PICKET_BENCH_DOC:-docs/PERFORMANCE.md}" "${@:2}"
}

# Builds the agent and sets PICKET to it: the release build, or the debug build (which the
# tests have built already) when PICKET_BENCH_PROFILE=debug, as the smoke run does.
build_picket() {
    if [ "${PICKET_BENCH_PROFILE:-release}" = debug ]; then
        cargo build --locked --package picket-agent >&2
        PICKET="$PWD/target/debug/picket"
    else
        cargo build --release --locked --package picket-agent >&2
        PICKET="$PWD/target/release/picket"
    fi
}
