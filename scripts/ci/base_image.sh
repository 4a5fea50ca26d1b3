#!/bin/sh
# Make a Debian bookworm base image from Debian's packages, for machines that
# cannot pull from a container registry, and load it into podman:
#
#   scripts/ci/base_image.sh [TAG]      # default: localhost/cxrstudy-base:bookworm
#
# Then: podman build --build-arg BASE_IMAGE=TAG ... (docs/ci.md).
#
# The root filesystem is made by mmdebstrap (minbase + Debian's Python 3.11 and
# what docker/Dockerfile installs), cached as a tarball in
# $CXR_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/cxrstudy) and imported.
# Nothing is done when podman already has TAG; a cached tarball is imported
# without running mmdebstrap again. CXR_REBUILD_BASE=1 makes both anew.
set -eu

tag=${1:-localhost/cxrstudy-base:bookworm}
suite=bookworm
cache=${CXR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cxrstudy}
tarball=$cache/rootfs-$suite.tar
root=$(cd "$(dirname "$0")/../.." && pwd)
# The repository's podman settings (scripts/ci/containers.conf) unless the caller chose others.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/scripts/ci/containers.conf}"

for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "error: $tool is not installed (apt-get install podman mmdebstrap)" >&2
    exit 1
  }
done

if [ "${CXR_REBUILD_BASE:-0}" = 1 ]; then
  rm -f "$tarball"
  podman image rm --force "$tag" >/dev/null 2>&1 || true
fi

if podman image exists "$tag"; then
  echo "base image $tag is present"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  mkdir -p "$cache"
  # python-is-python3: `python` as in the official image; git, make, tini and
  # ca-certificates: what the Dockerfile's OS layer installs anyway.
  mmdebstrap --quiet --variant=minbase --format=tar \
    --include=python3,python3-venv,python-is-python3,ca-certificates,git,make,tini \
    "$suite" "$tarball.part"
  mv "$tarball.part" "$tarball"
fi

podman import --quiet \
  --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV=LANG=C.UTF-8' \
  --change 'CMD=["/bin/bash"]' \
  --message "Debian $suite minbase made by mmdebstrap" \
  "$tarball" "$tag" >/dev/null
echo "base image $tag imported from $tarball"
