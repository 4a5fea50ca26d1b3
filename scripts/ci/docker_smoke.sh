#!/usr/bin/env bash
# Build one image variant and check it the way CI uses it. Run by the `docker`
# job of .github/workflows/ci.yml (Docker) and by tests/test_image.py (podman);
# the commands it issues are also checked in tests/test_docker.py with a stub.
#
#   docker_smoke.sh [cpu|cuda] [--repro]
#
# 1. builds docker/Dockerfile --target VARIANT from the repository root
#    (scripts/ci/build_image.sh: labels, BASE_IMAGE, TORCH_INDEX_URL, BUILD_CA);
# 2. the default command (`cxrstudy --help`) runs;
# 3. the default user is not root;
# 4. as another uid with the workspace mounted (what a GitHub container job
#    does), git trusts the workspace once safe.directory is set;
# 5. with --repro: `make repro` of the embedded sample inside the image, as the
#    calling user, on the mounted workspace.
#
# Environment: ENGINE (docker | podman, default docker), IMAGE (the tag), and
# what build_image.sh reads.
set -euo pipefail

variant=${1:-cpu}
repro=${2:-}
engine=${ENGINE:-docker}
image=${IMAGE:-cxrstudy:smoke-${variant}}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
uid=$(id -u)
gid=$(id -g)

ENGINE=$engine "$root/scripts/ci/build_image.sh" "$variant" "$image"
if [ "$engine" = podman ]; then
  # The repository's podman settings (scripts/ci/containers.conf) unless the caller chose others.
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/scripts/ci/containers.conf}"
fi

"$engine" run --rm "$image"

user=$("$engine" run --rm "$image" id -u)
if [ "$user" = 0 ]; then
  echo "error: $image runs as root" >&2
  exit 1
fi

"$engine" run --rm --user 4242:4242 --env HOME=/tmp \
  --volume "$root:/workspace" --workdir /workspace \
  "$image" sh -c 'git config --global --add safe.directory /workspace && git rev-parse --verify HEAD'

if [ "$repro" = --repro ]; then
  "$engine" run --rm --user "$uid:$gid" --env HOME=/tmp \
    --volume "$root:/workspace" --workdir /workspace \
    "$image" make repro VENV=
fi
echo "smoke test of $image passed"
