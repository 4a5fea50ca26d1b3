#!/usr/bin/env bash
# Point DVC at the CI remote and cache, in .dvc/config.local only (never
# committed). Called by the jobs of .github/workflows/gpu-study.yml; tested in
# tests/test_workflows.py and, against an S3 server, tests/test_act.py.
#
# Environment (all optional; with none set this does nothing and DVC uses the
# remote committed in .dvc/config):
#   DVC_REMOTE_URL   e.g. s3://bucket/cxrstudy, becomes the default remote "storage"
#   DVC_REMOTE_ENDPOINT  an S3-compatible server's URL (MinIO, Ceph, ...), for that remote
#   DVC_CACHE_DIR    a cache directory outside the workspace (the GPU runner
#                    mounts a persistent one), linked instead of copied
#   DVC              the dvc command (default: dvc)
#
# Credentials are not handled here: DVC's S3 remote reads AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY (or a role's session) from the environment, which the
# workflow fills from secrets on the steps that need them.
set -euo pipefail

read -r -a dvc <<<"${DVC:-dvc}"

if [ -n "${DVC_REMOTE_URL:-}" ]; then
  "${dvc[@]}" remote add --local --force --default storage "$DVC_REMOTE_URL"
  echo "DVC remote 'storage' -> $DVC_REMOTE_URL (local config)"
  if [ -n "${DVC_REMOTE_ENDPOINT:-}" ]; then
    "${dvc[@]}" remote modify --local storage endpointurl "$DVC_REMOTE_ENDPOINT"
    echo "DVC remote 'storage' endpoint -> $DVC_REMOTE_ENDPOINT (local config)"
  fi
fi

if [ -n "${DVC_CACHE_DIR:-}" ]; then
  mkdir -p "$DVC_CACHE_DIR"
  "${dvc[@]}" cache dir --local "$DVC_CACHE_DIR"
  # Another mount than the workspace: reflinks/hardlinks usually fail there and
  # DVC falls through to symlinks, so nothing is copied.
  "${dvc[@]}" config --local cache.type "reflink,hardlink,symlink,copy"
  echo "DVC cache -> $DVC_CACHE_DIR (local config)"
fi
