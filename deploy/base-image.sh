#!/usr/bin/env bash
# The image's Python base, built without a Docker engine or a registry: Debian bookworm by
# debootstrap (minbase) with Debian's python3 (3.11, as python:3.11-slim-bookworm), committed
# with buildah as a local image that deploy/Dockerfile takes through
# --build-arg PYTHON_IMAGE=<name>. Prints that name on stdout (progress on stderr).
#
#   deploy/base-image.sh            # build it unless the image store already has it
#
# Runs as root (debootstrap). The name's tag is a hash of this script, so editing the recipe
# builds a new base and an unchanged one is reused from buildah's store (the cache: a rerun
# costs nothing). Downloaded .debs are kept in $BASE_CACHE (a stable path outside the clone),
# so a rebuild after the store was wiped downloads nothing. Environment:
#   DEBIAN_MIRROR   (http://deb.debian.org/debian)  DEBIAN_SECURITY (…/debian-security)
#   BASE_CACHE      (/var/cache/rerank-image)       STORAGE_DRIVER  (vfs, as make image)
set -euo pipefail

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
CACHE=${BASE_CACHE:-/var/cache/rerank-image}
# vfs: plain directories, so it works wherever buildah runs (no overlay mounts needed).
buildah() { command buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }
export BUILDAH_ISOLATION=chroot  # no OCI runtime, no cgroups: a chroot in new namespaces
# python3-venv: `python -m venv` with pip in the build stage; python-is-python3: `python`.
PACKAGES=python3,python3-venv,python-is-python3
HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
NAME=localhost/rerank-python-base:$SUITE-$HASH

if buildah inspect --type image "$NAME" >/dev/null 2>&1; then
    echo "$NAME"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "base-image.sh: debootstrap needs root" >&2; exit 1; }

log() { echo "base-image.sh: $*" >&2; }
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$ctr")
mkdir -p "$CACHE/debs"
log "debootstrap $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debs" \
    "$SUITE" "$root" "$MIRROR" >&2

# As Debian's own slim images: no documentation, manual pages or translations, now or from any
# later apt-get install in a derived image.
cat >"$root/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
log "security and point-release updates"
buildah run "$ctr" -- sh -ec '
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -y -qq --no-install-recommends upgrade
    apt-get clean' >&2
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,locale,lintian}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/tmp/*

buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["python3"]' --created-by "deploy/base-image.sh: $NAME" \
    --label org.opencontainers.image.description="Debian $SUITE minbase + python3 (deploy/base-image.sh)" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$NAME" >/dev/null
trap - EXIT
log "committed $NAME"
echo "$NAME"
