#!/usr/bin/env bash
# Build one image variant and check it the way CI uses it. Run by the `docker`
# job of .github/workflows/ci.yml (a machine with a Docker engine); the
# commands it issues are checked in tests/test_docker.py with a stub `docker`.
#
#   docker_smoke.sh [cpu|cuda] [--repro]
#
# 1. builds docker/Dockerfile --target VARIANT from the repository root;
# 2. the entry point (`python -m cxrstudy --help`) runs;
# 3. the default user is not root;
# 4. as another uid with the workspace mounted (what a GitHub container job
#    does), git trusts the workspace once safe.directory is set;
# 5. with --repro: `make repro` of the embedded sample inside the image, as the
#    calling user, on the mounted workspace.
set -euo pipefail

variant=${1:-cpu}
repro=${2:-}
image=${IMAGE:-cxrstudy:smoke-${variant}}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
uid=$(id -u)
gid=$(id -g)

docker build --file "$root/docker/Dockerfile" --target "$variant" --tag "$image" "$root"

docker run --rm "$image" --help

user=$(docker run --rm --entrypoint id "$image" -u)
if [ "$user" = 0 ]; then
  echo "error: $image runs as root" >&2
  exit 1
fi

docker run --rm --user 4242:4242 --env HOME=/tmp \
  --volume "$root:/workspace" --workdir /workspace \
  --entrypoint bash "$image" -c \
  'git config --global --add safe.directory /workspace && git rev-parse --verify HEAD'

if [ "$repro" = --repro ]; then
  docker run --rm --user "$uid:$gid" --env HOME=/tmp \
    --volume "$root:/workspace" --workdir /workspace \
    --entrypoint make "$image" repro VENV=
fi
echo "docker smoke test of $image passed"
