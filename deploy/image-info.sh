#!/usr/bin/env bash
# An image's size and layers (what `make image` and `make image-test` print); with --du, also
# where the bytes go inside it (du of the largest directories).
#
#   deploy/image-info.sh IMAGE [--du]
set -euo pipefail
IMAGE=$1
buildah() { command buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@"; }

buildah inspect --type image "$IMAGE" | python3 -c '
import json, sys
info = json.load(sys.stdin)
manifest = json.loads(info["Manifest"]) if isinstance(info["Manifest"], str) else info["Manifest"]
layers = manifest["layers"]
made = [h for h in info["Docker"].get("history", []) if not h.get("empty_layer")]
total = sum(layer["size"] for layer in layers)
print(f"{sys.argv[1]}: {total / 1e6:.0f} MB uncompressed, {len(layers)} layers")
for n, layer in enumerate(layers):
    by = made[n].get("created_by", "") if n < len(made) - 1 else "the build (its one layer)"
    size, digest = layer["size"] / 1e6, layer["digest"][:19]
    print(f"  {n}: {size:7.1f} MB  {digest}  {by[:70]}")
' "$IMAGE"

if [ "${2:-}" = --du ]; then
    ctr=$(buildah from --quiet "$IMAGE")
    trap 'buildah rm "$ctr" >/dev/null' EXIT
    root=$(buildah mount "$ctr")
    (cd "$root" && du -xsh opt/venv opt/rerank/* usr/lib/python3* usr/lib/x86_64-linux-gnu \
        usr/bin usr/share var 2>/dev/null | sort -h | tail -12)
    echo "largest in /opt/venv/lib/python3*/site-packages:"
    (cd "$root"/opt/venv/lib/python3*/site-packages && du -sh -- * | sort -h | tail -10)
fi
