#!/usr/bin/env bash
# `make image`: deploy/Dockerfile built with buildah, without a Docker engine or daemon.
#
#   deploy/build-image.sh [IMAGE]     # default localhost/rerank-service:dev
#
# The base is deploy/base-image.sh's (debootstrap; built once, then reused); the Dockerfile
# is the one `docker build` takes, given that base through --build-arg PYTHON_IMAGE.
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
# Builds run as root with chroot isolation (no OCI runtime, no cgroups) on vfs storage
# (plain directories, no overlay mounts): what works inside a CI container or VM.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-localhost/rerank-service:dev}
buildah() { command buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }
export BUILDAH_ISOLATION=chroot

base=$(deploy/base-image.sh)
args=(--format docker --build-arg "PYTHON_IMAGE=$base"
      -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore -t "$IMAGE")
# pip in the build reaches the package index through this machine's trust store (which may
# hold a proxy's CA): lent read-only to the RUN steps, never copied into the image.
bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$bundle" ] && args+=(--volume "$bundle:$bundle:ro")
old=$(buildah images --quiet --no-trunc "$IMAGE" 2>/dev/null || true)
start=$SECONDS
buildah bud "${args[@]}" .
echo "built $IMAGE from $base in $((SECONDS - start)) s"
# The image this one replaced, now untagged (vfs keeps whole copies: ~400 MB each).
if [ -n "$old" ] && [ "$old" != "$(buildah images --quiet --no-trunc "$IMAGE")" ]; then
    buildah rmi "$old" >/dev/null 2>&1 || true
fi
deploy/image-info.sh "$IMAGE"
