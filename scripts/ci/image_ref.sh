#!/usr/bin/env bash
# Print, for $GITHUB_OUTPUT, "image=<ref>" for the study image of this commit:
#   ghcr.io/<owner>/<repo>/cxrstudy:<variant>-<sha>
# and "version=<version in pyproject.toml>" (the image's version label).
# Registry references must be lower case; GitHub owner/repo names need not be.
# Tested in tests/test_workflows.py.
set -euo pipefail

variant=${1:-cuda}
registry=${IMAGE_REGISTRY:-ghcr.io}
: "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY}"
: "${GITHUB_SHA:?set GITHUB_SHA}"

repo=$(printf '%s' "$GITHUB_REPOSITORY" | tr '[:upper:]' '[:lower:]')
printf 'image=%s/%s/cxrstudy:%s-%s\n' "$registry" "$repo" "$variant" "$GITHUB_SHA"
root=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -nE 's/^version[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' "$root/pyproject.toml" | head -n 1)
printf 'version=%s\n' "${version:-unknown}"
