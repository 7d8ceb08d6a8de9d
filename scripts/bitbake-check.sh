#!/usr/bin/env bash
# Parses meta-picket with real BitBake, offline, as a new user of the layer would add it: a build
# directory with OE-core and meta-picket only, no manufacturer layer and no Picket settings.
#
#  wrynose (OE-core wrynose, BitBake 2.18):
#   1. `bitbake -p`: every recipe parses (a layer that breaks parsing gets removed);
#   2. through BitBake's API (tinfoil), with the configuration alone: the kernel configuration
#      fragment (linux-yocto parsed with a bbappend that requires
#      recipes-kernel/linux/picket-kernel-config.inc has picket.cfg in SRC_URI, and BitBake
#      finds the layer's file), and picket-native, which the image class needs, parses; picket
#      with a manufacturer's bbappend giving only the keys installs the layer's released eBPF
#      object for the machine (aarch64), checked against its SHA-256 in picket-bpf-objects.inc;
#      with PICKET_BPF_OBJECT_SHA256 and an object of its own, that object; with an object but
#      no SHA-256, or for a CPU without a released object (mips), it is skipped and the reason
#      says what to provide;
#   3. `bitbake -e picket`: the recipe is skipped, and the reason names what to provide: the
#      keys, and nothing about the eBPF object.
#  scarthgap (OE-core scarthgap, BitBake 2.8; its Rust, 1.75, is older than picket's
#  rust-version):
#   1. `bitbake -p`, as above;
#   4. `bitbake -e picket-native` fails: skipped, and the reason names the Rust needed, the one
#      the build has and the layer that provides a newer one (meta-lts-mixins' Rust mixin);
#   5. an image that asks for picket (`bitbake -n core-image-minimal`) stops with that reason,
#      not a parse error;
#   6. through tinfoil, with a layer that sets RUSTVERSION the way the Rust mixin does
#      (RUSTVERSION ?= "1.91.0%" in its layer.conf): picket with the keys and picket-native
#      parse; with PICKET_RUST_VERSION set to a Rust one minor version too old, picket is
#      skipped with the Rust reason.
# BitBake 2.18's server parses every recipe again for the command after a `bitbake -e TARGET`
# or a failed one: each release has one such command, its last.
#
# The snapshots of OE-core and BitBake come from PICKET_YOCTO_SNAPSHOTS (default: shared/yocto
# beside the checkout or one of its parents, see its README); they are unpacked once into
# target/bitbake/. BitBake refuses to run as root, so it runs as the system user
# picket-bitbake, created when missing. Needs root (apt, the user). Host packages OE-core's
# sanity check wants are installed when missing.
#
# Cost: BitBake parses every recipe of OE-core once per release: about a minute each on an
# otherwise idle 2-core machine (135 s for the whole check), up to five minutes each while
# other builds run. scripts/yocto-check.sh runs it; alone: sudo scripts/bitbake-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
layer=$root/yocto-layer/meta-picket
# Else shared/yocto beside the checkout, or beside one of its parents (a clone in a
# subdirectory of the workspace).
find_snapshots() {
    local dir=$root
    while [ "$dir" != / ]; do
        dir=$(dirname "$dir")
        [ -f "$dir/shared/yocto/SHA256SUMS" ] && { echo "$dir/shared/yocto"; return; }
    done
    echo "$root/../shared/yocto"
}
snapshots=${PICKET_YOCTO_SNAPSHOTS:-$(find_snapshots)}
top=$root/target/bitbake
user=picket-bitbake

log() { printf '\033[1m[bitbake]\033[0m %s\n' "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    log "installs host packages and creates the user BitBake runs as: run this as root (sudo $0)"
    exit 1
fi
[ -f "$snapshots/SHA256SUMS" ] ||
    fail "no Yocto snapshots in $snapshots (set PICKET_YOCTO_SNAPSHOTS to the directory with SHA256SUMS)"

# Host tools OE-core's sanity check requires (HOSTTOOLS) that a Debian host may lack, and the
# en_US.UTF-8 locale it asks for. A package is there when dpkg says it is installed (not only
# its configuration files left).
need=()
for p in chrpath diffstat gawk lz4 zstd file cpio locales wget rpcsvc-proto make gcc g++ git \
    patch bzip2 xz-utils python3; do
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing Debian packages: ${need[*]}"
    apt-get update -qq || log "apt-get update reported errors; installing anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if ! locale -a 2>/dev/null | grep -qix 'en_US.utf-\?8'; then
    log "generating the en_US.UTF-8 locale"
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
    grep -qx 'en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >>/etc/locale.gen
    locale-gen >/dev/null
fi
if ! id "$user" >/dev/null 2>&1; then
    log "creating the system user $user (BitBake refuses root)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$user"
fi

mkdir -p "$top"
# The snapshots, checked and unpacked once per content.
(cd "$snapshots" && sha256sum --check --quiet SHA256SUMS) || fail "the snapshots in $snapshots do not match SHA256SUMS"
unpack() { # ARCHIVE DIR
    local archive=$snapshots/$1 dir=$top/src/$2 sum
    sum=$(grep " $1\$" "$snapshots/SHA256SUMS" | cut -d' ' -f1)
    [ -n "$sum" ] || fail "$1 is not in $snapshots/SHA256SUMS"
    if [ "$(cat "$dir/.sha256" 2>/dev/null)" != "$sum" ]; then
        log "unpacking $1"
        rm -rf "$dir"
        mkdir -p "$dir"
        tar -xzf "$archive" -C "$dir" --strip-components=1
        echo "$sum" >"$dir/.sha256"
    fi
    # An empty repository of its own: OE-core reads the git revision of its directory into the
    # configuration (METADATA_REVISION), and git would otherwise find the checkout around
    # target/, whose every commit would invalidate BitBake's parse cache.
    [ -d "$dir/.git" ] || git init -q "$dir"
}
unpack bitbake-2.18.tar.gz bitbake-2.18
unpack openembedded-core-wrynose.tar.gz oe-core-wrynose
unpack bitbake-2.8.tar.gz bitbake-2.8
unpack openembedded-core-scarthgap.tar.gz oe-core-scarthgap

# The user's home: git must accept the root-owned checkout holding the layer (the recipe reads
# its HEAD at parse time).
home=$top/home
mkdir -p "$home"
printf '[safe]\n\tdirectory = *\n' >"$home/.gitconfig"

# A manufacturer's layer that uses the kernel fragment the way the layer's README says.
kernel_layer=$top/meta-kernel-user
mkdir -p "$kernel_layer/conf" "$kernel_layer/recipes-kernel/linux"
cat >"$kernel_layer/conf/layer.conf" <<'EOF'
BBPATH .= ":${LAYERDIR}"
BBFILES += "${LAYERDIR}/recipes-*/*/*.bbappend"
BBFILE_COLLECTIONS += "kerneluser"
BBFILE_PATTERN_kerneluser = "^${LAYERDIR}/"
BBFILE_PRIORITY_kerneluser = "7"
LAYERDEPENDS_kerneluser = "core picket"
LAYERSERIES_COMPAT_kerneluser = "scarthgap wrynose"
EOF
echo 'require recipes-kernel/linux/picket-kernel-config.inc' \
    >"$kernel_layer/recipes-kernel/linux/linux-yocto_%.bbappend"

# Manufacturers' picket bbappends, as the layer's README writes them: the keys only (keys/);
# the keys and an eBPF object of their own with its SHA-256 (own/); the keys and an object
# without its SHA-256 (stray/); the keys only, for a CPU without a released object (mips/).
# Parsed through tinfoil, each instead of the layers' bbappends.
vendor=$top/meta-vendor-picket
rm -rf "$vendor"
for kind in keys own stray mips; do
    mkdir -p "$vendor/$kind/files"
    echo "vendor public key (parsing only)" >"$vendor/$kind/files/vendor.pub"
    {
        # shellcheck disable=SC2016 # BitBake expands it
        echo 'FILESEXTRAPATHS:prepend := "${THISDIR}/files:"'
        echo 'PICKET_TRUSTED_KEYS = "file://vendor.pub"'
    } >"$vendor/$kind/picket_%.bbappend"
done
for kind in own stray; do
    echo "the manufacturer's own eBPF object (parsing only)" >"$vendor/$kind/files/picket-sensors.bpf.o"
done
echo 'TARGET_ARCH = "mips"' >>"$vendor/mips/picket_%.bbappend"
own_sha=$(sha256sum "$vendor/own/files/picket-sensors.bpf.o" | cut -d' ' -f1)
echo "PICKET_BPF_OBJECT_SHA256 = \"$own_sha\"" >>"$vendor/own/picket_%.bbappend"
released_sha=$(sed -n 's/^    aarch64=\([0-9a-f]\{64\}\) \\$/\1/p' \
    "$layer/recipes-security/picket/picket-bpf-objects.inc")
[ -n "$released_sha" ] || fail "picket-bpf-objects.inc has no SHA-256 for aarch64"

# A build directory: conf/ for the given layers, and the sanity check's network test off.
setup_build() { # DIR LAYERS...
    local dir=$1
    shift
    mkdir -p "$dir/conf"
    {
        # shellcheck disable=SC2016 # BitBake expands it
        echo 'BBPATH = "${TOPDIR}"'
        echo 'BBFILES ?= ""'
        echo "BBLAYERS = \"$*\""
    } >"$dir/conf/bblayers.conf"
    # An image that asks for picket is part of the configuration from the start: a change of
    # configuration would make BitBake parse every recipe again.
    cat >"$dir/conf/local.conf" <<'EOF'
MACHINE = "qemuarm64"
CONNECTIVITY_CHECK_URIS = ""
BB_NO_NETWORK = "1"
IMAGE_INSTALL:append:pn-core-image-minimal = " picket"
# One server for the commands of a check, which then parse every recipe once: BitBake keys
# its on-disk parse cache on a hash of the configuration, which differs between a new
# server's first command and its later ones (every new server would parse again) and, once
# a command has reset the server (`bitbake -e TARGET` does), takes in the console log's
# name, with the time in it, unless that name is constant.
BB_SERVER_TIMEOUT = "120"
EOF
    echo "BB_CONSOLELOG = \"$dir/tmp/log/cooker/console.log\"" >>"$dir/conf/local.conf"
}
chown -R "$user:$user" "$top"

# Runs a command as the BitBake user in build directory $1 with BitBake $2 on the PATH.
as_user() { # BUILDDIR BITBAKEDIR CMD...
    local dir=$1 bb=$2
    shift 2
    (cd "$dir" && runuser -u "$user" -- env -i HOME="$home" LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8 \
        PATH="$bb/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@")
}

# What the recipe's skip reason must say: the keys, and where they are documented; the
# released eBPF object serves the machine, so nothing about the object.
expect_reason() { # FILE
    local f=$1 word
    for word in 'picket was skipped' PICKET_TRUSTED_KEYS 'meta-picket/README.md'; do
        grep -qF -- "$word" "$f" || fail "the skip reason does not mention '$word': $(grep -i skip "$f" | head -n 5)"
    done
    for word in PICKET_BPF_OBJECT_SHA256 picket-sensors.bpf.o 'eBPF object'; do
        grep 'picket was skipped' "$f" | grep -qF -- "$word" &&
            fail "the skip reason asks for '$word', though this layer releases the object for the machine: $(grep -m1 'picket was skipped' "$f")"
    done
    return 0
}

# What the skip reason must say when the build's Rust is too old: the version needed (the
# recipe's PICKET_RUST_MIN), the build's, and how to get a newer one.
rust_min=$(sed -n 's/^PICKET_RUST_MIN = "\(.*\)"$/\1/p' "$layer/recipes-security/picket/picket_git.bb")
[ -n "$rust_min" ] || fail "picket_git.bb has no PICKET_RUST_MIN"
expect_rust_reason() { # FILE BUILD-RUST
    local f=$1 word
    for word in 'was skipped' "needs Rust $rust_min or later" "this build has Rust $2" \
        'meta-lts-mixins' 'scarthgap/rust' 'PICKET_RUST_VERSION' 'meta-picket/README.md'; do
        grep -qF -- "$word" "$f" || fail "the skip reason does not say '$word': $(grep -i -m5 skip "$f")"
    done
}
expect_rust_reason_scarthgap() { expect_rust_reason "$1" 1.75.0; }

parse_release() { # RELEASE BITBAKE OECORE
    local release=$1 bb=$top/src/$2 oe=$top/src/$3 build=$top/build-$1 start
    setup_build "$build" "$oe/meta" "$layer"
    chown -R "$user:$user" "$build"
    start=$SECONDS
    as_user "$build" "$bb" bitbake -p >"$build/parse.log" 2>&1 ||
        fail "$release: bitbake -p failed: $(tail -n 30 "$build/parse.log")"
    grep -q 'ERROR' "$build/parse.log" && fail "$release: bitbake -p reported errors: $(grep ERROR "$build/parse.log")"
    log "$release: every recipe parses ($((SECONDS - start)) s)"
}

native_rust_refused() { # RELEASE BITBAKE BUILD-RUST
    local release=$1 bb=$top/src/$2 build=$top/build-$1 start=$SECONDS
    # picket-native (the image class's scan-and-sign tool) needs no settings, but a Rust.
    if as_user "$build" "$bb" bitbake -e picket-native >"$build/env-native.log" 2>&1; then
        fail "$release: bitbake -e picket-native succeeded with Rust $3"
    fi
    expect_rust_reason "$build/env-native.log" "$3"
    log "$release: picket-native is skipped ($((SECONDS - start)) s): $(grep -o 'was skipped: .*' "$build/env-native.log" | head -n 1)"
}

picket_skipped() { # RELEASE BITBAKE
    local release=$1 bb=$top/src/$2 build=$top/build-$1 start=$SECONDS
    # `bitbake -e picket` fails for a skipped recipe, with the reason.
    if as_user "$build" "$bb" bitbake -e picket >"$build/env.log" 2>&1; then
        fail "$release: bitbake -e picket succeeded without the manufacturer's settings"
    fi
    expect_reason "$build/env.log"
    log "$release: picket is skipped ($((SECONDS - start)) s): $(grep -o 'picket was skipped: .*' "$build/env.log" | head -n 1)"
}

image_refused() { # RELEASE BITBAKE EXPECT-REASON
    local release=$1 bb=$top/src/$2 build=$top/build-$1 expect=$3 start=$SECONDS
    # An image asking for picket: refused with the skip reason, before any task runs.
    if as_user "$build" "$bb" bitbake -n core-image-minimal >"$build/image.log" 2>&1; then
        fail "$release: an image with picket but without the manufacturer's settings was accepted"
    fi
    grep -q "Nothing RPROVIDES 'picket'" "$build/image.log" ||
        fail "$release: the image failed for another reason: $(grep -m5 ERROR "$build/image.log")"
    grep -q 'Parsing halted\|ParseError\|Unable to get checksum' "$build/image.log" &&
        fail "$release: parse errors: $(grep -m5 ERROR "$build/image.log")"
    "$expect" "$build/image.log"
    log "$release: an image with picket stops with the skip reason ($((SECONDS - start)) s)"
}

stop_server() { # RELEASE BITBAKE
    as_user "$top/build-$1" "$top/src/$2" bitbake -m >/dev/null 2>&1 || true
}

tinfoil_checks() {
    local bb=$top/src/bitbake-2.18 oe=$top/src/oe-core-wrynose start
    # The kernel fragment, through a manufacturer layer's bbappend, and picket-native: the
    # recipes are parsed by BitBake's own API (tinfoil), with the configuration alone, rather
    # than every recipe again for a build directory with one more layer.
    local kbuild=$top/build-wrynose-kernel kernel_recipe
    kernel_recipe=$(printf '%s\n' "$oe"/meta/recipes-kernel/linux/linux-yocto_*.bb | sort -V | tail -n 1)
    setup_build "$kbuild" "$oe/meta" "$layer" "$kernel_layer"
    chown -R "$user:$user" "$kbuild"
    start=$SECONDS
    as_user "$kbuild" "$bb" python3 - "$bb/lib" "$kernel_recipe" \
        "$kernel_layer/recipes-kernel/linux/linux-yocto_%.bbappend" \
        "$layer/recipes-security/picket/picket_git.bb" "$vendor" >"$kbuild/kernel.log" 2>&1 <<'EOF' ||
import sys
sys.path.insert(0, sys.argv[1])
import bb.fetch2
import bb.tinfoil
with bb.tinfoil.Tinfoil() as tinfoil:
    tinfoil.prepare(config_only=True)
    d = tinfoil.parse_recipe_file(sys.argv[2], appends=True, appendlist=[sys.argv[3]])
    print("SRC_URI=" + d.getVar("SRC_URI"))
    print("FILESEXTRAPATHS=" + d.getVar("FILESEXTRAPATHS"))
    print("LOCALPATH=" + bb.fetch2.Fetch(["file://picket.cfg"], d).localpath("file://picket.cfg"))
    native = tinfoil.parse_recipe_file("virtual:native:" + sys.argv[4])
    print("NATIVE_PN=" + native.getVar("PN"))
    # picket with each manufacturer's bbappend: the eBPF object it installs, and its SHA-256, or
    # why it is skipped (BitBake records a SkipRecipe's reason in __SKIPPED).
    for kind in ("keys", "own", "stray", "mips"):
        r = tinfoil.parse_recipe_file(sys.argv[4], appends=True,
                                      appendlist=["%s/%s/picket_%%.bbappend" % (sys.argv[5], kind)])
        if r.getVar("__SKIPPED"):
            print("%s_SKIPPED=%s" % (kind.upper(), " ".join(r.getVar("__SKIPPED").split())))
            continue
        uri = "file://" + r.getVar("PICKET_BPF_OBJECT")
        print("%s_SRC_URI=%s" % (kind.upper(), " ".join(r.getVar("SRC_URI").split())))
        print("%s_OBJECT=%s" % (kind.upper(), bb.fetch2.Fetch([uri], r).localpath(uri)))
        print("%s_SHA256=%s" % (kind.upper(), r.getVar("PICKET_BPF_SHA256")))
EOF
        fail "wrynose: parsing $(basename "$kernel_recipe") with the fragment failed: $(tail -n 20 "$kbuild/kernel.log")"
    grep -q '^SRC_URI=.*file://picket\.cfg' "$kbuild/kernel.log" ||
        fail "wrynose: picket.cfg is not in linux-yocto's SRC_URI: $(grep '^SRC_URI=' "$kbuild/kernel.log")"
    grep -qx "LOCALPATH=$layer/recipes-kernel/linux/files/picket.cfg" "$kbuild/kernel.log" ||
        fail "wrynose: BitBake does not find the layer's picket.cfg: $(grep '^LOCALPATH=\|^FILESEXTRAPATHS=' "$kbuild/kernel.log")"
    grep -qx 'NATIVE_PN=picket-native' "$kbuild/kernel.log" ||
        fail "wrynose: picket-native does not parse: $(tail -n 20 "$kbuild/kernel.log")"
    # The keys alone: the released object for aarch64 (qemuarm64), from this layer.
    grep -q '^KEYS_SRC_URI=.* file://bpf/aarch64/picket-sensors\.bpf\.o .*file://vendor\.pub' "$kbuild/kernel.log" ||
        fail "wrynose: with the keys alone, SRC_URI lacks the released object: $(grep '^KEYS_' "$kbuild/kernel.log")"
    grep -qx "KEYS_OBJECT=$layer/recipes-security/picket/files/bpf/aarch64/picket-sensors.bpf.o" "$kbuild/kernel.log" ||
        fail "wrynose: BitBake does not find the released object in the layer: $(grep '^KEYS_' "$kbuild/kernel.log")"
    grep -qx "KEYS_SHA256=$released_sha" "$kbuild/kernel.log" ||
        fail "wrynose: the released object is not checked against picket-bpf-objects.inc's SHA-256 $released_sha: $(grep '^KEYS_' "$kbuild/kernel.log")"
    # An object of the manufacturer's own, with its SHA-256: that object, that SHA-256.
    grep -q '^OWN_SRC_URI=.* file://picket-sensors\.bpf\.o ' "$kbuild/kernel.log" ||
        fail "wrynose: the manufacturer's object is not in SRC_URI: $(grep '^OWN_' "$kbuild/kernel.log")"
    grep -q '^OWN_SRC_URI=.*file://bpf/' "$kbuild/kernel.log" &&
        fail "wrynose: the released object is in SRC_URI beside the manufacturer's: $(grep '^OWN_' "$kbuild/kernel.log")"
    grep -qx "OWN_OBJECT=$vendor/own/files/picket-sensors.bpf.o" "$kbuild/kernel.log" ||
        fail "wrynose: BitBake does not find the manufacturer's object: $(grep '^OWN_' "$kbuild/kernel.log")"
    grep -qx "OWN_SHA256=$own_sha" "$kbuild/kernel.log" ||
        fail "wrynose: the manufacturer's object is not checked against PICKET_BPF_OBJECT_SHA256: $(grep '^OWN_' "$kbuild/kernel.log")"
    # An object without its SHA-256: skipped, and the reason asks for it.
    grep -q '^STRAY_SKIPPED=.*PICKET_BPF_OBJECT_SHA256' "$kbuild/kernel.log" ||
        fail "wrynose: an object without PICKET_BPF_OBJECT_SHA256 was not refused with that reason: $(grep '^STRAY_' "$kbuild/kernel.log")"
    # A CPU without a released object: skipped, and the reason says how to make one.
    grep -q '^MIPS_SKIPPED=.*eBPF object for TARGET_ARCH mips.*build-ebpf-object\.sh.*PICKET_BPF_OBJECT_SHA256' "$kbuild/kernel.log" ||
        fail "wrynose: a mips machine was not refused for want of an eBPF object: $(grep '^MIPS_' "$kbuild/kernel.log")"
    log "wrynose: $(basename "$kernel_recipe") with picket.cfg, picket-native, and picket with the keys alone (the released object), an object of its own, an object without its SHA-256, a CPU without a released object parse as expected ($((SECONDS - start)) s)"
    as_user "$kbuild" "$bb" bitbake -m >/dev/null 2>&1 || true
}

# Scarthgap with a newer Rust, as the Rust mixin of meta-lts-mixins gives it: its layer.conf sets
# RUSTVERSION (a weak default, read before OE-core's tcmode-default.inc). No Rust recipe here:
# parsing picket needs none.
scarthgap_mixin() {
    local bb=$top/src/bitbake-2.8 oe=$top/src/oe-core-scarthgap start=$SECONDS
    local mixin=$top/meta-rust-mixin build=$top/build-scarthgap-mixin old
    old=$(awk -F. '{ printf "%d.%d.0", $1, $2 - 1 }' <<<"$rust_min")
    mkdir -p "$mixin/conf" "$vendor/oldrust"
    {
        # shellcheck disable=SC2016 # BitBake expands it
        echo 'BBPATH .= ":${LAYERDIR}"'
        echo 'BBFILE_COLLECTIONS += "scarthgap-rust-mixin"'
        # shellcheck disable=SC2016 # BitBake expands it
        echo 'BBFILE_PATTERN_scarthgap-rust-mixin := "^${LAYERDIR}/"'
        echo 'BBFILE_PRIORITY_scarthgap-rust-mixin = "6"'
        echo 'LAYERSERIES_COMPAT_scarthgap-rust-mixin = "scarthgap"'
        echo 'LAYERDEPENDS_scarthgap-rust-mixin = "core"'
        echo "RUSTVERSION ?= \"$rust_min.0%\""
    } >"$mixin/conf/layer.conf"
    echo "PICKET_RUST_VERSION = \"$old\"" >"$vendor/oldrust/picket_%.bbappend"
    setup_build "$build" "$oe/meta" "$layer" "$mixin"
    chown -R "$user:$user" "$build" "$mixin" "$vendor"
    as_user "$build" "$bb" python3 - "$bb/lib" "$layer/recipes-security/picket/picket_git.bb" \
        "$vendor" >"$build/mixin.log" 2>&1 <<'PY' ||
import sys
sys.path.insert(0, sys.argv[1])
import bb.tinfoil
with bb.tinfoil.Tinfoil() as tinfoil:
    tinfoil.prepare(config_only=True)
    print("RUSTVERSION=" + tinfoil.config_data.getVar("RUSTVERSION"))
    native = tinfoil.parse_recipe_file("virtual:native:" + sys.argv[2])
    print("NATIVE=" + " ".join((native.getVar("__SKIPPED") or native.getVar("PN")).split()))
    keys = "%s/keys/picket_%%.bbappend" % sys.argv[3]
    old = "%s/oldrust/picket_%%.bbappend" % sys.argv[3]
    for kind, appends in (("KEYS", [keys]), ("OLDRUST", [keys, old])):
        r = tinfoil.parse_recipe_file(sys.argv[2], appends=True, appendlist=appends)
        skipped = r.getVar("__SKIPPED")
        print("%s=%s" % (kind, "was skipped: " + " ".join(skipped.split()) if skipped
                         else "parsed " + " ".join(r.getVar("SRC_URI").split())))
PY
        fail "scarthgap with a newer Rust: tinfoil failed: $(tail -n 20 "$build/mixin.log")"
    grep -qx "RUSTVERSION=$rust_min.0%" "$build/mixin.log" ||
        fail "scarthgap: the mixin's RUSTVERSION is not the build's: $(grep '^RUSTVERSION=' "$build/mixin.log")"
    grep -qx 'NATIVE=picket-native' "$build/mixin.log" ||
        fail "scarthgap with Rust $rust_min: picket-native does not parse: $(grep '^NATIVE=' "$build/mixin.log")"
    grep -q '^KEYS=parsed .*file://vendor\.pub' "$build/mixin.log" ||
        fail "scarthgap with Rust $rust_min: picket with the keys does not parse: $(grep '^KEYS=' "$build/mixin.log")"
    grep '^OLDRUST=' "$build/mixin.log" >"$build/oldrust.log" || true
    expect_rust_reason "$build/oldrust.log" "$old"
    log "scarthgap with RUSTVERSION $rust_min.0% (as the Rust mixin sets it): picket and picket-native parse; with PICKET_RUST_VERSION $old, picket is skipped ($((SECONDS - start)) s)"
    as_user "$build" "$bb" bitbake -m >/dev/null 2>&1 || true
}

# A failure leaves no server holding a build directory's lock (a success stopped them).
stop_all() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        stop_server wrynose bitbake-2.18
        stop_server scarthgap bitbake-2.8
    fi
}
trap stop_all EXIT

total=$SECONDS
parse_release wrynose bitbake-2.18 oe-core-wrynose
tinfoil_checks
picket_skipped wrynose bitbake-2.18
stop_server wrynose bitbake-2.18
parse_release scarthgap bitbake-2.8 oe-core-scarthgap
native_rust_refused scarthgap bitbake-2.8 1.75.0
image_refused scarthgap bitbake-2.8 expect_rust_reason_scarthgap
stop_server scarthgap bitbake-2.8
scarthgap_mixin
log "BitBake checks passed in $((SECONDS - total)) s"
echo "bitbake: passed"
