# Shared by the benchmark scripts: statistics, and rewriting one section of docs/PERFORMANCE.md.
# Source it: `. "$(dirname "$0")/lib.sh"`.

now() { date +%s%N; }

# The median of the numbers in "$1" (space-separated).
med() {
    echo "$1" | tr ' ' '\n' | grep -v '^$' | sort -n |
        awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

# $2 / $1 with two decimals (0 when $1 is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }'; }

# The machine and commit the figures were taken on.
machine() {
    echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), commit $(git rev-parse --short HEAD)"
}

# Replaces the section titled "## $1" of docs/PERFORMANCE.md (or of $PICKET_BENCH_DOC, which the
# smoke runs point elsewhere) with "$2" (appends it if absent).
write_section() {
    local doc="${PICKET_BENCH_DOC:-docs/PERFORMANCE.md}"
    [ -f "$doc" ] || printf '# Performance\n\nFigures measured by the scripts in `bench/`; each section is rewritten by its script.\n' > "$doc"
    python3 - "$doc" "$1" "$2" <<'PY'
import re, sys
path, title, section = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
pattern = re.compile(r"## " + re.escape(title) + r"\n.*?(?=\n## |\Z)", re.S)
new = section.rstrip("\n") + "\n"
text = pattern.sub(lambda _: new, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + new
open(path, "w").write(text)
PY
    echo "updated $doc" >&2
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
