#!/usr/bin/env bash
# Configure an S3 / S3-compatible (MinIO, Ceph, R2, moto...) DVC remote in one
# command. See docs/remote.md.
#
#   scripts/remote.sh s3://BUCKET/PREFIX [--endpoint URL] [--region REGION]
#                     [--profile NAME] [--name NAME] [--local] [--save-credentials]
#
# The remote becomes the default remote ("storage" unless --name). Its URL,
# endpoint and region are not secret: they go to .dvc/config (commit it, and
# every clone finds the remote), or with --local to .dvc/config.local, which
# DVC's own .dvc/.gitignore keeps out of git.
#
# Credentials are never written to .dvc/config. Either export
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) whenever
# you run dvc push/pull (what CI does, from its secrets), or use --profile (an
# ~/.aws profile), or --save-credentials, which copies the exported values
# into .dvc/config.local once (the script refuses if that file is not
# git-ignored).
#
# Environment: DVC, the dvc command (default: dvc).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
  echo "remote.sh: $*" >&2
  exit 2
}

read -r -a dvc <<<"${DVC:-dvc}"

url=""
endpoint=""
region=""
profile=""
name="storage"
local_flag=()
save_credentials=false

while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --endpoint) [ $# -ge 2 ] || die "--endpoint needs a value"; endpoint="$2"; shift 2 ;;
    --endpoint=*) endpoint="${1#*=}"; shift ;;
    --region) [ $# -ge 2 ] || die "--region needs a value"; region="$2"; shift 2 ;;
    --region=*) region="${1#*=}"; shift ;;
    --profile) [ $# -ge 2 ] || die "--profile needs a value"; profile="$2"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --name) [ $# -ge 2 ] || die "--name needs a value"; name="$2"; shift 2 ;;
    --name=*) name="${1#*=}"; shift ;;
    --local) local_flag=(--local); shift ;;
    --save-credentials) save_credentials=true; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$url" ] || die "only one remote URL"; url="$1"; shift ;;
  esac
done

[ -n "$url" ] || { usage >&2; exit 2; }
case "$url" in
  s3://?*) ;;
  *) die "expected an s3://BUCKET/PREFIX URL, got '$url'" ;;
esac
case "$url" in
  *@*) die "the URL must not carry credentials" ;;
esac
if [ -n "$endpoint" ]; then
  case "$endpoint" in
    http://* | https://*) ;;
    *) die "--endpoint must start with http:// or https://" ;;
  esac
  case "$endpoint" in
    *://*@*) die "the endpoint URL must not carry credentials" ;;
  esac
fi

# Work from the DVC repository's root, so the checks below see its .dvc/.
root="$("${dvc[@]}" root)" || die "not inside a DVC repository (run dvc init first)"
cd "$root"

writes_local=false
if [ ${#local_flag[@]} -gt 0 ] || [ "$save_credentials" = true ]; then
  writes_local=true
fi
if [ "$writes_local" = true ] && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git check-ignore -q .dvc/config.local \
    || die ".dvc/config.local is not git-ignored (DVC's .dvc/.gitignore should list /config.local); refusing to write there"
fi

"${dvc[@]}" remote add "${local_flag[@]}" --force --default "$name" "$url"
if [ -n "$endpoint" ]; then
  "${dvc[@]}" remote modify "${local_flag[@]}" "$name" endpointurl "$endpoint"
fi
if [ -n "$region" ]; then
  "${dvc[@]}" remote modify "${local_flag[@]}" "$name" region "$region"
fi
if [ -n "$profile" ]; then
  # A profile name is not a secret, but it is personal: keep it local.
  "${dvc[@]}" remote modify --local "$name" profile "$profile"
fi

if [ "$save_credentials" = true ]; then
  [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ] \
    || die "--save-credentials needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
  "${dvc[@]}" remote modify --local "$name" access_key_id "$AWS_ACCESS_KEY_ID"
  "${dvc[@]}" remote modify --local "$name" secret_access_key "$AWS_SECRET_ACCESS_KEY"
  if [ -n "${AWS_SESSION_TOKEN:-}" ]; then
    "${dvc[@]}" remote modify --local "$name" session_token "$AWS_SESSION_TOKEN"
  fi
  echo "credentials saved to .dvc/config.local (git-ignored)"
fi

if [ ${#local_flag[@]} -gt 0 ]; then
  echo "DVC remote '$name' -> $url${endpoint:+ at $endpoint} (.dvc/config.local, not committed)"
else
  echo "DVC remote '$name' -> $url${endpoint:+ at $endpoint} (.dvc/config: commit it)"
fi
