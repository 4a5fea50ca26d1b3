#!/bin/sh
# Build one target of docker/Dockerfile with Docker or podman, with the OCI
# labels filled in:
#
#   scripts/ci/build_image.sh cpu|cuda TAG
#
# Environment (all optional):
#   ENGINE           docker | podman (default: docker if its daemon answers,
#                    else podman)
#   BASE_IMAGE       --build-arg BASE_IMAGE (default: the Dockerfile's)
#   TORCH_INDEX_URL  --build-arg TORCH_INDEX_URL when set, even empty (= PyPI)
#   BUILD_CA         a PEM file of extra CA certificates, passed as the build
#                    secret build_ca (trusted by pip during the build only)
#   APP_UID, APP_GID the image user's ids (default: the Dockerfile's, 1001)
#   VERSION          default: the version in pyproject.toml
#   REVISION         default: git rev-parse HEAD
#   SOURCE           default: $GITHUB_SERVER_URL/$GITHUB_REPOSITORY, else the
#                    git remote "origin", else "unknown"
set -eu

usage() {
  echo "usage: $0 cpu|cuda TAG" >&2
  exit 2
}
[ "$#" -eq 2 ] || usage
target=$1
tag=$2
case "$target" in cpu | cuda) ;; *) usage ;; esac

root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${ENGINE:-}" ]; then
  if docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
if [ "$ENGINE" = podman ]; then
  # The repository's podman settings (scripts/ci/containers.conf) unless the caller chose others.
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/scripts/ci/containers.conf}"
fi

version=${VERSION:-$(sed -nE 's/^version[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' "$root/pyproject.toml" | head -n 1)}
revision=${REVISION:-$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)}
if [ -z "${SOURCE:-}" ]; then
  if [ -n "${GITHUB_REPOSITORY:-}" ]; then
    SOURCE=${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_REPOSITORY
  else
    SOURCE=$(git -C "$root" remote get-url origin 2>/dev/null || echo unknown)
  fi
fi

set -- build --file "$root/docker/Dockerfile" --target "$target" --tag "$tag" \
  --build-arg "VERSION=${version:-unknown}" --build-arg "REVISION=$revision" --build-arg "SOURCE=$SOURCE"
[ -z "${BASE_IMAGE:-}" ] || set -- "$@" --build-arg "BASE_IMAGE=$BASE_IMAGE"
[ -z "${TORCH_INDEX_URL+set}" ] || set -- "$@" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
[ -z "${APP_UID:-}" ] || set -- "$@" --build-arg "APP_UID=$APP_UID"
[ -z "${APP_GID:-}" ] || set -- "$@" --build-arg "APP_GID=$APP_GID"
if [ -n "${BUILD_CA:-}" ]; then
  [ -s "$BUILD_CA" ] || { echo "error: BUILD_CA=$BUILD_CA is not a readable, non-empty PEM file" >&2; exit 2; }
  set -- "$@" --secret "id=build_ca,src=$BUILD_CA"
fi
exec "$ENGINE" "$@" "$root"
