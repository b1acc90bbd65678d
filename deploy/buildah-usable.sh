#!/usr/bin/env bash
# Exit 0 when this machine can build and run the image the way `make image` does (root,
# buildah on vfs storage, chroot isolation: new mount/UTS/IPC namespaces and bind mounts);
# otherwise print why not and exit 1. .ci/run skips the image steps on that, and only on that.
[ "$(id -u)" = 0 ] || { echo "not root (debootstrap and buildah's chroot isolation need it)"; exit 1; }
for tool in buildah debootstrap unshare; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed"; exit 1; }
done
if ! out=$(buildah --storage-driver "${STORAGE_DRIVER:-vfs}" info 2>&1 >/dev/null); then
    echo "buildah cannot open its storage: ${out:0:300}"; exit 1
fi
if ! out=$(unshare --mount --uts --ipc --fork sh -c 'mount --bind / /mnt && umount /mnt' 2>&1); then
    echo "no mount namespaces or bind mounts here (an unprivileged container?): ${out:0:300}"
    exit 1
fi
