#!/bin/sh
# Generates Picket's baseline policy from an image's root filesystem, signs it, checks that the
# image trusts the signature, and installs the signed bundle into the image.
#
# Called by classes/picket-baseline.bbclass at image build time (inside do_rootfs, under
# pseudo, so owners and modes are the image's); the tests run exactly this script.
#
#   picket-baseline-sign.sh --picket BIN --rootfs DIR --key FILE --work DIR
#                           [--serial N] [--name NAME] [--protected "P..."] [--exclude "P..."]
#                           [--config /etc/picket/picket.toml]
#
# --picket    the `picket` binary that runs on the build host (picket-native)
# --rootfs    the image's root filesystem; paths are recorded as the device sees them (from /)
# --key       the signing key (NAME.key from `picket keygen`); it is read, never copied
# --work      where the draft (policy.toml), the scan configuration and the bundle are kept
# --serial    the policy's serial (anti-rollback: raise it with every release); default 1
# --name      the policy's name; default "baseline"
# --protected paths (as on the device) whose files are recorded with hash, owner and mode
# --exclude   paths (as on the device) not walked at all
# --config    the agent's configuration inside the image (a device path): the device class,
#             the policy path and the trust directory are read from it, so the bundle is made
#             for, and installed where, the agent expects it
set -eu

die() {
    echo "picket-baseline-sign: $*" >&2
    exit 1
}

picket="" rootfs="" key="" work="" serial=1 name=baseline protected="/etc" exclude=""
config=/etc/picket/picket.toml
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
    --picket) picket=$2 ;;
    --rootfs) rootfs=$2 ;;
    --key) key=$2 ;;
    --work) work=$2 ;;
    --serial) serial=$2 ;;
    --name) name=$2 ;;
    --protected) protected=$2 ;;
    --exclude) exclude=$2 ;;
    --config) config=$2 ;;
    *) die "unknown option $1" ;;
    esac
    shift 2
done
[ -n "$picket" ] || die "--picket is required"
[ -n "$rootfs" ] || die "--rootfs is required"
[ -n "$key" ] || die "--key is required (PICKET_SIGNING_KEY: the manufacturer's NAME.key)"
[ -n "$work" ] || die "--work is required"
[ -x "$picket" ] || die "$picket is not an executable"
[ -d "$rootfs" ] || die "root filesystem $rootfs is not a directory"
[ -f "$key" ] && [ -r "$key" ] || die "signing key $key is not a readable file"
case "$serial" in
'' | *[!0-9]*) die "serial must be a decimal number, got '$serial'" ;;
esac
case "$config" in
/*) ;;
*) die "--config must be an absolute path as on the device, got '$config'" ;;
esac

# A top-level string key of the agent's configuration (before the first [table]), as written
# by the picket recipe: `key = "value"`.
config_value() {
    value=$(awk -v key="$1" '
        /^[ \t]*\[/ { exit }
        $0 ~ "^[ \t]*" key "[ \t]*=" {
            sub(/^[^=]*=[ \t]*"/, ""); sub(/"[ \t]*(#.*)?$/, ""); print; exit
        }' "$rootfs$config")
    [ -n "$value" ] || die "$config in the image has no $1 = \"...\" (is picket installed?)"
    echo "$value"
}
[ -f "$rootfs$config" ] || die "$config is missing from the image: add picket to IMAGE_INSTALL"
device_class=$(config_value device_class)
bundle_path=$(config_value policy)
trust_dir=$(config_value trust_dir)
case "$bundle_path" in
/*) ;;
*) die "policy in $config is not an absolute path: $bundle_path" ;;
esac

# TOML basic strings: escape backslashes and double quotes.
toml_string() {
    printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}
toml_paths() {
    sep=""
    printf '['
    for p in $1; do
        printf '%s%s' "$sep" "$(toml_string "$p")"
        sep=", "
    done
    printf ']'
}

mkdir -p "$work"
{
    echo "# Written by picket-baseline-sign.sh for $rootfs"
    echo "protected = $(toml_paths "$protected")"
    echo "exclude = $(toml_paths "$exclude")"
    echo
    echo "[metadata]"
    echo "name = $(toml_string "$name")"
    echo "device_class = $(toml_string "$device_class")"
    echo "serial = $serial"
} >"$work/scan.toml"

# `created` comes from SOURCE_DATE_EPOCH when the build sets it (reproducible images).
"$picket" baseline scan --root "$rootfs" --config "$work/scan.toml" --out "$work/policy.toml"
"$picket" policy sign --key "$key" --in "$work/policy.toml" --out "$work/policy.bundle"
# The image must trust the key that signed its baseline, or the agent refuses to start.
"$picket" policy verify --trust "$rootfs$trust_dir" "$work/policy.bundle" ||
    die "the image's trust directory $trust_dir has no public key for $key: add its .pub to PICKET_TRUSTED_KEYS"

install -d -m 0755 "$rootfs$(dirname "$bundle_path")"
install -m 0644 "$work/policy.bundle" "$rootfs$bundle_path"
echo "picket-baseline-sign: installed $bundle_path (device class $device_class, serial $serial)"
