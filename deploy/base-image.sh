#!/usr/bin/env bash
# The base image the embps images build FROM: prints its name on stdout, says on stderr where it came from.
#
#   deploy/base-image.sh [IMAGE]
#
# With IMAGE (make image BASE_IMAGE=...): that image, pulled when the engine lacks it; an error if it cannot be.
# Without: debian:bookworm-slim when the engine has it or can pull it; otherwise (no registry, as on an
# air-gapped cluster) a local Debian bookworm base, embps-base:bookworm, built once with
# `debootstrap --variant=minbase` from DEBIAN_MIRROR and `docker import`ed; the engine keeps it for later runs.
set -euo pipefail

DOCKER=${DOCKER:-docker}
DEFAULT=debian:bookworm-slim
LOCAL=embps-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
pull() { "$DOCKER" pull -q "$1" >/dev/null 2>&1; }

if [ $# -gt 0 ] && [ -n "$1" ]; then
    if have "$1" || pull "$1"; then
        echo "base image: $1 (given)" >&2
        echo "$1"
        exit 0
    fi
    echo "base image: $1 is neither in the engine nor pullable" >&2
    exit 1
fi
if have "$DEFAULT"; then
    echo "base image: $DEFAULT (in the engine)" >&2
    echo "$DEFAULT"
    exit 0
fi
if pull "$DEFAULT"; then
    echo "base image: $DEFAULT (pulled)" >&2
    echo "$DEFAULT"
    exit 0
fi
if have "$LOCAL"; then
    echo "base image: $LOCAL (no registry: the local debootstrap base, built earlier)" >&2
    echo "$LOCAL"
    exit 0
fi

echo "base image: $DEFAULT cannot be pulled; building $LOCAL with debootstrap from $MIRROR" >&2
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/embps-base.XXXXXX")
trap '$SUDO rm -rf "$ROOTFS"' EXIT
$SUDO debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# What debian:bookworm-slim has too: the updates and security suites, no documentation or man pages in
# later packages, no recommended packages, no package caches.
$SUDO tee "$ROOTFS/etc/apt/sources.list" >/dev/null <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
$SUDO tee "$ROOTFS/etc/dpkg/dpkg.cfg.d/embps-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
echo 'APT::Install-Recommends "false";' | $SUDO tee "$ROOTFS/etc/apt/apt.conf.d/99embps-no-recommends" >/dev/null
$SUDO rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/man/* \
    "$ROOTFS"/usr/share/info/*
$SUDO find "$ROOTFS/usr/share/doc" -type f ! -name copyright -delete
$SUDO find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
$SUDO tar --numeric-owner -C "$ROOTFS" -c . \
    | "$DOCKER" import -c 'CMD ["bash"]' -m "debootstrap --variant=minbase bookworm $MIRROR" - "$LOCAL" >/dev/null
echo "base image: $LOCAL (built with debootstrap: no registry)" >&2
echo "$LOCAL"
