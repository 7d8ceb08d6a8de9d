# Generates Picket's baseline policy from the image's root filesystem at build time, signs it
# with the manufacturer's key, and installs the signed bundle into the image, where the agent's
# default configuration expects it (/etc/picket/policy.bundle).
#
# Use it in an image recipe (`inherit picket_baseline`) or for every image
# (`IMAGE_CLASSES += "picket_baseline"` in local.conf). It adds picket to IMAGE_INSTALL.
#
# The work is done by scripts/picket-baseline-sign.sh (the tests run that very script) with
# picket-native, at the end of do_rootfs, as meta-security's aide-init-db class does for AIDE's
# database: the scan runs under pseudo, so it records the owners and modes the image will have.
# The signing key stays on the build host: it is read, never copied into the image or a
# package. The policy (TOML) and the bundle are also deployed next to the image, for review.

# Required: the signing key (`picket keygen` NAME.key), a path on the build host. Its public
# half must be in the picket recipe's PICKET_TRUSTED_KEYS: the build fails otherwise.
PICKET_SIGNING_KEY ??= ""
# The policy's serial. Devices refuse a policy with a lower serial than one they accepted
# (anti-rollback): raise it with every release of the image.
PICKET_BASELINE_SERIAL ??= "1"
PICKET_BASELINE_NAME ??= "${IMAGE_BASENAME}"
# Paths (as on the device) whose files must never change: hash, owner, group and mode.
PICKET_BASELINE_PROTECTED ??= "${sysconfdir}"
# Paths (as on the device) not walked: run-time state, and files under /etc that a running
# system writes (machine-id at first boot, resolv.conf by DHCP, adjtime by hwclock, timestamp
# by OE's sysvinit at shutdown). /proc, /sys, /dev, /run and /tmp are never walked.
PICKET_BASELINE_EXCLUDE ??= "${localstatedir} /home \
                             ${sysconfdir}/machine-id ${sysconfdir}/resolv.conf \
                             ${sysconfdir}/adjtime ${sysconfdir}/timestamp"

PICKET_BASELINE_WORKDIR = "${WORKDIR}/picket-baseline"
# This layer's scripts/picket-baseline-sign.sh (every layer's directory is in BBPATH).
PICKET_BASELINE_SCRIPT = "${@bb.utils.which(d.getVar('BBPATH'), 'scripts/picket-baseline-sign.sh')}"

IMAGE_INSTALL:append = " picket"
do_rootfs[depends] += "picket-native:do_populate_sysroot"

# A different key or settings must give a different rootfs; the key's content is not part of
# the signature on purpose (it is secret), its path is.
picket_baseline_sign[vardeps] += "PICKET_SIGNING_KEY PICKET_BASELINE_SERIAL PICKET_BASELINE_NAME \
                                  PICKET_BASELINE_PROTECTED PICKET_BASELINE_EXCLUDE"
picket_baseline_sign[doc] = "Scans the image's rootfs, signs the baseline and installs it into the image"

picket_baseline_sign() {
    if [ -z "${PICKET_SIGNING_KEY}" ]; then
        bbfatal "picket_baseline: set PICKET_SIGNING_KEY to the path of the key that signs the baseline (picket keygen NAME.key); see meta-picket/README.md"
    fi
    if [ ! -f "${PICKET_BASELINE_SCRIPT}" ]; then
        bbfatal "picket_baseline: scripts/picket-baseline-sign.sh not found in BBPATH: is meta-picket in bblayers.conf?"
    fi
    rm -rf ${PICKET_BASELINE_WORKDIR}
    sh ${PICKET_BASELINE_SCRIPT} \
        --picket ${STAGING_BINDIR_NATIVE}/picket \
        --rootfs ${IMAGE_ROOTFS} \
        --key ${PICKET_SIGNING_KEY} \
        --work ${PICKET_BASELINE_WORKDIR} \
        --serial ${PICKET_BASELINE_SERIAL} \
        --name "${PICKET_BASELINE_NAME}" \
        --protected "${PICKET_BASELINE_PROTECTED}" \
        --exclude "${PICKET_BASELINE_EXCLUDE}" \
        --config ${sysconfdir}/picket/picket.toml
    # Deployed with the image (as its manifest is), for review and for the fleet backend.
    for ext in toml bundle; do
        install -m 0644 ${PICKET_BASELINE_WORKDIR}/policy.$ext \
            ${IMGDEPLOYDIR}/${IMAGE_NAME}.picket-baseline.$ext
        if [ -n "${IMAGE_LINK_NAME}" ]; then
            ln -sf ${IMAGE_NAME}.picket-baseline.$ext \
                ${IMGDEPLOYDIR}/${IMAGE_LINK_NAME}.picket-baseline.$ext
        fi
    done
}

# After every other post-processing step of the root filesystem, so that the baseline
# describes the files as they are shipped.
ROOTFS_POSTPROCESS_COMMAND:append = " picket_baseline_sign"
