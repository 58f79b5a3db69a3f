#!/usr/bin/env bash
# A Debian 12 base image made with debootstrap, for machines that cannot pull from a registry
# (the smoke test uses it). Needs root, debootstrap and podman (or docker).
#
#   images/debootstrap-base.sh TAG [ROOTFS_DIR]
#   EXTRA_CA_DIR=/usr/local/share/ca-certificates images/debootstrap-base.sh ...
#     copies *.crt from EXTRA_CA_DIR into the image's /usr/local/share/ca-certificates, so that
#     builds behind a TLS-intercepting proxy trust it (the Dockerfiles' ca-certificates picks them up).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # debootstrap lives in /usr/sbin, not on every user's PATH
command -v debootstrap > /dev/null || { echo "debootstrap-base.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 2; }
tag=${1:?usage: debootstrap-base.sh TAG [ROOTFS_DIR]}
rootfs=${2:-$(mktemp -d)}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
engine=${ENGINE:-podman}

if [ ! -x "$rootfs/usr/bin/apt-get" ]; then
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
fi
if [ -n "${EXTRA_CA_DIR:-}" ]; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp "$EXTRA_CA_DIR"/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
chmod 755 "$rootfs"  # mktemp -d makes it 0700: the image's / must be traversable by non-root users
rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/archives/"*.deb
tar -C "$rootfs" -c . | "$engine" import --change "CMD [\"/bin/bash\"]" - "$tag"
