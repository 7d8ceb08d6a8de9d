SUMMARY = "Picket: runtime security agent for embedded Linux"
DESCRIPTION = "eBPF tracepoint sensors watch process execution, network connections \
               and file changes; the agent compares what it sees with a baseline policy \
               signed by the device manufacturer and raises alerts for every deviation."
SECTION = "security"
LICENSE = "Apache-2.0"
# The source tree declares its license in the workspace's Cargo.toml (it has no license file):
# that line is checksummed. scripts/yocto-check.sh checks that this still matches Cargo.toml.
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=13;endline=13;md5=2507bd5f0713f05419cd2f22fa06fe62"

# The workspace's version (Cargo.toml); scripts/yocto-check.sh checks that they agree.
PV = "0.1.0+git"

# The source: by default the git checkout this layer is part of (PICKET_SRCDIR: the layer is
# yocto-layer/meta-picket in Picket's source tree), at its current commit, so that the recipe,
# picket-crates.inc and the code always come from one commit. A manufacturer building from a mirror of the repository sets
# PICKET_SRC_URI and SRCREV (a full commit id) instead; picket-crates.inc must then come from
# that commit's Cargo.lock (scripts/gen-crates-inc.py).
PICKET_SRCDIR := "${@os.path.normpath('${THISDIR}/../../../..')}"
PICKET_SRC_URI ?= "git://${PICKET_SRCDIR};protocol=file;nobranch=1"
# destsuffix=${BP} puts the checkout where S is by default on every supported release
# (${WORKDIR}/${BP} on scarthgap, ${UNPACKDIR}/${BP} later), so S is not set here.
SRC_URI = "${PICKET_SRC_URI};destsuffix=${BP}"
# On the target only: the files below come from this layer (picket.service, picket.init,
# picket.toml.in, the released eBPF object) and from the manufacturer (the public keys, and the
# eBPF object when it builds its own; see below).
SRC_URI:append:class-target = " \
    file://picket.service \
    file://picket.init \
    file://picket.toml.in \
    file://${PICKET_BPF_OBJECT} \
    ${PICKET_TRUSTED_KEYS} \
"
SRCREV ?= "${@picket_checkout_head(d)}"
# The checkout's HEAD moves without any recipe file changing: parse the recipe every time, as
# BitBake does for AUTOREV, so that SRCREV is never a stale cached value.
# nooelint: oelint.vars.mispell.unknown - BB_DONT_CACHE is BitBake's (lib/bb/cache.py), not in oelint's list
BB_DONT_CACHE = "1"

def picket_checkout_head(d):
    """The commit the checkout holding this layer is at: the default SRCREV."""
    srcdir = d.getVar('PICKET_SRCDIR')
    try:
        out, _ = bb.process.run('git rev-parse --verify HEAD', cwd=srcdir)
    except bb.process.ExecutionError as e:
        # Skipped, not fatal: a parse error would stop every recipe of the build.
        raise bb.parse.SkipRecipe("%s is not a git checkout whose HEAD can be read (%s): set "
                                  "PICKET_SRC_URI and SRCREV (see meta-picket/README.md, "
                                  "Variables)" % (srcdir, str(e).strip()))
    return out.strip()

require ${BPN}-crates.inc
require ${BPN}-bpf-objects.inc

inherit cargo cargo-update-recipe-crates systemd update-rc.d

# Only the agent (bin `picket`): of the other workspace members it links the libraries (common,
# policy, proto); the backend, test support and xtask are not for the device; and the
# eBPF crate (picket-ebpf) needs what OE's Rust toolchain does not have: `-Z build-std` for the
# bpfel-unknown-none target (a nightly-capable toolchain) and bpf-linker. Its object is
# released in this layer for each supported architecture (files/bpf/ARCH/, built reproducibly
# with the project's toolchain by scripts/release-ebpf-objects.sh) and installed from SRC_URI.
CARGO_BUILD_FLAGS:append = " --package picket-agent --bin picket"
# Tells the agent's build.rs not to build the eBPF programs; the agent then loads them with
# `--bpf-object`.
export AYA_BUILD_SKIP = "1"

# --- Manufacturer settings -------------------------------------------------------------------
# In a bbappend of the manufacturer's layer (recipes-security/picket/picket_%.bbappend), with
# FILESEXTRAPATHS:prepend := "${THISDIR}/files:" and, in its files/ directory, the public keys.
# See ../../README.md.
#
# Only to install an eBPF object of one's own instead of the released one: its SHA-256
# (scripts/build-ebpf-object.sh prints it), with picket-sensors.bpf.o in that files/ directory.
# The object is code loaded into the devices' kernel, so the build refuses any other.
PICKET_BPF_OBJECT_SHA256 ?= ""
# The public keys (`picket keygen` NAME.pub) the devices trust to sign policies:
# "file://vendor.pub file://vendor-next.pub".
PICKET_TRUSTED_KEYS ?= ""
# Written into /etc/picket/picket.toml. A policy for another device class is refused.
PICKET_DEVICE_CLASS ?= "${MACHINE}"
# The device's id in alerts. One image serves many devices: set it per device at provisioning
# (it will be the TLS client certificate's CN once alerts are reported over MQTT).
PICKET_DEVICE_ID ?= "${MACHINE}"
# ---------------------------------------------------------------------------------------------

# The device's architecture as Rust names it (target_arch), which the eBPF programs are built
# for: Yocto's TARGET_ARCH of the supported ones. BPF objects are little endian: a big-endian
# CPU (armeb, aarch64_be...) has none.
def picket_bpf_arch(d):
    arch = d.getVar('TARGET_ARCH')
    return arch if arch in ('aarch64', 'arm', 'x86_64', 'riscv64') else ''

# The SHA-256 of the released object for the device (picket-bpf-objects.inc), or nothing.
def picket_bpf_released_sha256(d):
    released = dict(e.split('=', 1) for e in (d.getVar('PICKET_BPF_RELEASED_SHA256') or '').split())
    return released.get(d.getVar('PICKET_BPF_ARCH'), '')

PICKET_BPF_ARCH = "${@picket_bpf_arch(d)}"
# The object installed, relative to the unpack directory, and the SHA-256 it must have: the
# manufacturer's when PICKET_BPF_OBJECT_SHA256 is set, else the released one for the device.
PICKET_BPF_OBJECT = "${@'picket-sensors.bpf.o' if d.getVar('PICKET_BPF_OBJECT_SHA256') else 'bpf/${PICKET_BPF_ARCH}/picket-sensors.bpf.o'}"
PICKET_BPF_SHA256 = "${@d.getVar('PICKET_BPF_OBJECT_SHA256') or picket_bpf_released_sha256(d)}"

# Without the manufacturer's settings the recipe is skipped, with what to provide, rather than
# failing to parse: a file:// entry that cannot be found is a parse error, and a parse error
# stops every recipe of the build. An image that asks for picket then fails with this reason.
# picket-native (the image class's scan-and-sign tool) needs none of them.
# The oldest Rust that builds picket: the workspace's rust-version (Cargo.toml; scripts/yocto-check.sh
# checks that they agree and that no locked crate needs a newer one).
PICKET_RUST_MIN = "1.91"
# The Rust of the build, as OE-core selects it (RUSTVERSION, "1.75%" on scarthgap, "1.94.1%" on
# wrynose; the Rust mixin of meta-lts-mixins sets its own in its layer.conf). A layer that
# provides Rust some other way sets PICKET_RUST_VERSION to the version it provides.
PICKET_RUST_VERSION ?= "${@d.getVar('PREFERRED_VERSION_rust-native') or ''}"

# With a Rust older than PICKET_RUST_MIN, picket and picket-native are skipped with what to do,
# rather than failing to compile (cargo cannot even read Cargo.lock before 1.78).
def picket_rust_too_old(d):
    import re
    def parse(v):
        m = re.match(r'(\d+)\.(\d+)(?:\.(\d+))?', v or '')
        return tuple(int(x or 0) for x in m.groups()) if m else None
    have, need = parse(d.getVar('PICKET_RUST_VERSION')), parse(d.getVar('PICKET_RUST_MIN'))
    if have is None or have >= need:
        return None
    return ("picket needs Rust %s or later (its Cargo.toml's rust-version: crates it uses need "
            "edition 2024 and recent compilers), and this build has Rust %s (RUSTVERSION, or "
            "PICKET_RUST_VERSION when set). On scarthgap, add the Rust mixin layer of "
            "meta-lts-mixins (branch scarthgap/rust, at a revision whose RUSTVERSION is %s or "
            "later), or another layer providing such a Rust and set PICKET_RUST_VERSION to its "
            "version (meta-picket/README.md, \"Rust\")"
            % (d.getVar('PICKET_RUST_MIN'), '.'.join(str(x) for x in have),
               d.getVar('PICKET_RUST_MIN')))

# nooelint: oelint.task.noanonpython - skipping a recipe at parse time (SkipRecipe) takes one
python __anonymous() {
    too_old = picket_rust_too_old(d)
    if too_old:
        raise bb.parse.SkipRecipe(too_old)
    if d.getVar('CLASSOVERRIDE') != 'class-target':
        return
    filespath = d.getVar('FILESPATH')
    def found(name):
        return bool(bb.utils.which(filespath, name))
    missing = []
    if d.getVar('PICKET_BPF_OBJECT_SHA256'):
        # The manufacturer's own object.
        if not found('picket-sensors.bpf.o'):
            missing.append("picket-sensors.bpf.o (PICKET_BPF_OBJECT_SHA256 is set), in the files/ "
                           "directory your bbappend adds to FILESEXTRAPATHS")
    elif found('picket-sensors.bpf.o'):
        missing.append("PICKET_BPF_OBJECT_SHA256, the SHA-256 of the picket-sensors.bpf.o of your "
                       "files/ directory (meta-picket/scripts/build-ebpf-object.sh prints the "
                       "line), or remove that file to install the released object")
    elif not d.getVar('PICKET_BPF_SHA256') or not found(d.getVar('PICKET_BPF_OBJECT')):
        missing.append("an eBPF object for TARGET_ARCH %s: this layer releases them for aarch64, "
                       "arm, x86_64 and riscv64 only; build one with "
                       "meta-picket/scripts/build-ebpf-object.sh, put it in your files/ directory "
                       "and set PICKET_BPF_OBJECT_SHA256 (meta-picket/README.md, \"The eBPF object\")"
                       % d.getVar('TARGET_ARCH'))
    keys = [k.split(';')[0][len('file://'):] for k in (d.getVar('PICKET_TRUSTED_KEYS') or '').split()
            if k.startswith('file://')]
    if not keys:
        missing.append("PICKET_TRUSTED_KEYS, the public keys that sign your policies "
                       "(\"file://vendor.pub\", made by `picket keygen`)")
    for key in keys:
        if not found(key):
            missing.append("%s (in PICKET_TRUSTED_KEYS), in that files/ directory" % key)
    # (BitBake expands variables in the reason when it shows it: it must name none.)
    if missing:
        raise bb.parse.SkipRecipe("picket needs the device manufacturer's settings, in a "
                                  "picket_%%.bbappend of your layer (meta-picket/README.md, "
                                  "steps 3 and 4); missing: %s" % "; ".join(missing))
}

SYSTEMD_SERVICE:${PN} = "picket.service"
INITSCRIPT_NAME = "picket"
# Early in the multi-user runlevels, once the rcS scripts have mounted the file systems and set
# up /var/volatile (OE's networking starts just before, at 01); stopped late.
INITSCRIPT_PARAMS = "start 05 2 3 4 5 . stop 95 0 1 6 ."

# UNPACKDIR exists from styhead on; scarthgap unpacks local files into WORKDIR.
PICKET_FILES = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

do_install:append:class-target() {
    if [ -z "${PICKET_TRUSTED_KEYS}" ]; then
        bbfatal "PICKET_TRUSTED_KEYS is empty: set it to the public keys that sign your policies (see meta-picket/README.md)"
    fi
    # The object must be the released one, or the one the manufacturer pinned.
    actual=$(sha256sum ${PICKET_FILES}/${PICKET_BPF_OBJECT} | cut -d' ' -f1)
    if [ "$actual" != "${PICKET_BPF_SHA256}" ]; then
        bbfatal "${PICKET_BPF_OBJECT} has SHA-256 $actual, not '${PICKET_BPF_SHA256}' (PICKET_BPF_OBJECT_SHA256, or picket-bpf-objects.inc for a released object)"
    fi
    install -d ${D}${libdir}/picket
    install -m 0644 ${PICKET_FILES}/${PICKET_BPF_OBJECT} ${D}${libdir}/picket/picket-sensors.bpf.o

    install -d -m 0755 ${D}${sysconfdir}/picket
    install -d -m 0755 ${D}${sysconfdir}/picket/trust
    sed -e 's|@PICKET_DEVICE_ID@|${PICKET_DEVICE_ID}|' \
        -e 's|@PICKET_DEVICE_CLASS@|${PICKET_DEVICE_CLASS}|' \
        -e 's|@LOCALSTATEDIR@|${localstatedir}|g' \
        -e 's|@SYSCONFDIR@|${sysconfdir}|g' \
        ${PICKET_FILES}/picket.toml.in > ${D}${sysconfdir}/picket/picket.toml
    chmod 0644 ${D}${sysconfdir}/picket/picket.toml
    for key in ${PICKET_TRUSTED_KEYS}; do
        name=$(basename "${key#file://}" | cut -d';' -f1)
        case "$name" in
        *.pub) ;;
        *) bbfatal "PICKET_TRUSTED_KEYS: $name is not a .pub file (picket keygen writes NAME.pub)" ;;
        esac
        install -m 0644 "${PICKET_FILES}/$name" "${D}${sysconfdir}/picket/trust/$name"
    done

    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        install -d ${D}${systemd_system_unitdir}
        sed -e 's|@BINDIR@|${bindir}|g' -e 's|@LIBDIR@|${libdir}|g' \
            -e 's|@SYSCONFDIR@|${sysconfdir}|g' \
            ${PICKET_FILES}/picket.service > ${D}${systemd_system_unitdir}/picket.service
        chmod 0644 ${D}${systemd_system_unitdir}/picket.service
    fi
    if ${@bb.utils.contains('DISTRO_FEATURES', 'sysvinit', 'true', 'false', d)}; then
        install -d ${D}${INIT_D_DIR}
        sed -e 's|@BINDIR@|${bindir}|g' -e 's|@LIBDIR@|${libdir}|g' \
            -e 's|@SYSCONFDIR@|${sysconfdir}|g' -e 's|@LOCALSTATEDIR@|${localstatedir}|g' \
            ${PICKET_FILES}/picket.init > ${D}${INIT_D_DIR}/picket
        chmod 0755 ${D}${INIT_D_DIR}/picket
    fi
}

CONFFILES:${PN} = "${sysconfdir}/picket/picket.toml"

# picket-native runs `picket baseline scan` and `picket policy sign` on the build host (the
# picket_baseline image class).
BBCLASSEXTEND = "native"
