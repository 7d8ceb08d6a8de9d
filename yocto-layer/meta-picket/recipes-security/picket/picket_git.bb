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
# picket.toml.in) and from the manufacturer (the eBPF object and the public keys, see below).
SRC_URI:append:class-target = " \
    file://picket.service \
    file://picket.init \
    file://picket.toml.in \
    file://picket-sensors.bpf.o \
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

inherit cargo cargo-update-recipe-crates systemd update-rc.d

# Only the agent (bin `picket`): of the other workspace members it links the libraries (common,
# policy, proto); the backend, test support and xtask are not for the device; and the
# eBPF crate (picket-ebpf) needs what OE's Rust toolchain does not have: `-Z build-std` for the
# bpfel-unknown-none target (a nightly-capable toolchain) and bpf-linker. Its object is built
# with the project's toolchain (scripts/build-ebpf-object.sh) and installed from SRC_URI.
CARGO_BUILD_FLAGS:append = " --package picket-agent --bin picket"
# Tells the agent's build.rs not to build the eBPF programs; the agent then loads them with
# `--bpf-object`.
export AYA_BUILD_SKIP = "1"

# --- Manufacturer settings -------------------------------------------------------------------
# In a bbappend of the manufacturer's layer (recipes-security/picket/picket_%.bbappend), with
# FILESEXTRAPATHS:prepend := "${THISDIR}/files:" and, in its files/ directory,
# picket-sensors.bpf.o and the public keys. See ../../README.md.
#
# The SHA-256 of picket-sensors.bpf.o (scripts/build-ebpf-object.sh prints it): the object is
# code loaded into the devices' kernel, so the build refuses any other.
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

# Without the manufacturer's settings the recipe is skipped, with what to provide, rather than
# failing to parse: a file:// entry that cannot be found is a parse error, and a parse error
# stops every recipe of the build. An image that asks for picket then fails with this reason.
# picket-native (the image class's scan-and-sign tool) needs none of them.
# nooelint: oelint.task.noanonpython - skipping a recipe at parse time (SkipRecipe) takes one
python __anonymous() {
    if d.getVar('CLASSOVERRIDE') != 'class-target':
        return
    filespath = d.getVar('FILESPATH')
    def found(name):
        return bool(bb.utils.which(filespath, name))
    missing = []
    if not d.getVar('PICKET_BPF_OBJECT_SHA256'):
        missing.append("PICKET_BPF_OBJECT_SHA256, the SHA-256 of the eBPF object "
                       "picket-sensors.bpf.o (meta-picket/scripts/build-ebpf-object.sh builds "
                       "it and prints the line)")
    if not found('picket-sensors.bpf.o'):
        missing.append("picket-sensors.bpf.o, in the files/ directory your bbappend adds to "
                       "FILESEXTRAPATHS")
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
                                  "steps 3 to 5); missing: %s" % "; ".join(missing))
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
    # The object must be the one the manufacturer pinned.
    actual=$(sha256sum ${PICKET_FILES}/picket-sensors.bpf.o | cut -d' ' -f1)
    if [ "$actual" != "${PICKET_BPF_OBJECT_SHA256}" ]; then
        bbfatal "picket-sensors.bpf.o has SHA-256 $actual, PICKET_BPF_OBJECT_SHA256 is '${PICKET_BPF_OBJECT_SHA256}'"
    fi
    install -d ${D}${libdir}/picket
    install -m 0644 ${PICKET_FILES}/picket-sensors.bpf.o ${D}${libdir}/picket/picket-sensors.bpf.o

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
