#!/usr/bin/env bash
# Print "image=<ref>" for the study image of this commit, for $GITHUB_OUTPUT:
#   ghcr.io/<owner>/<repo>/cxrstudy:<variant>-<sha>
# Registry references must be lower case; GitHub owner/repo names need not be.
# Tested in tests/test_workflows.py.
set -euo pipefail

variant=${1:-cuda}
registry=${IMAGE_REGISTRY:-ghcr.io}
: "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY}"
: "${GITHUB_SHA:?set GITHUB_SHA}"

repo=$(printf '%s' "$GITHUB_REPOSITORY" | tr '[:upper:]' '[:lower:]')
printf 'image=%s/%s/cxrstudy:%s-%s\n' "$registry" "$repo" "$variant" "$GITHUB_SHA"
