#!/usr/bin/env bash
# Create, or update in place, the one comment on a pull request that starts
# with the marker line <!-- cxrstudy-ci:MARKER --> and was written by AUTHOR,
# through `gh api` (the GitHub CLI). Called by pr-comment.yml and
# publish_study.sh; tested in tests/test_workflows.py against a fake GitHub API.
#
#   upsert_comment.sh --marker MARKER --body-file FILE (--pr N | --pr-file FILE)
#                     [--expect-head-sha SHA] [--author LOGIN] [--repo OWNER/NAME]
#
# --pr-file is the JSON ({"number": N, "head_sha": "..."}) that the untrusted
# `ci` run uploaded: its number must be a positive integer. With
# --expect-head-sha (the trusted workflow_run.head_sha) the pull request's
# current head must be that commit, otherwise nothing is posted; that also
# drops the results of superseded pushes that finish late. Only AUTHOR's
# comments (default github-actions[bot], GITHUB_TOKEN's identity) are ever
# edited, never a person's, even one that quotes the marker.
#
# Environment: GH_TOKEN (github.com) or GH_ENTERPRISE_TOKEN with GH_HOST, as
# for any gh command; GITHUB_REPOSITORY (default for --repo); GH (the gh
# command, default gh).
set -euo pipefail

die() {
  echo "error: $*" >&2
  exit 2
}

marker='' body_file='' pr='' pr_file='' expect_sha='' author='github-actions[bot]'
repo=${GITHUB_REPOSITORY:-}
while [ "$#" -gt 0 ]; do
  [ "$#" -ge 2 ] || die "$1 needs a value"
  case "$1" in
    --marker) marker=$2 ;;
    --body-file) body_file=$2 ;;
    --pr) pr=$2 ;;
    --pr-file) pr_file=$2 ;;
    --expect-head-sha) expect_sha=$2 ;;
    --author) author=$2 ;;
    --repo) repo=$2 ;;
    *) die "unknown option $1 (accepted: --marker --body-file --pr --pr-file --expect-head-sha --author --repo)" ;;
  esac
  shift 2
done
read -r -a gh <<<"${GH:-gh}"

[[ "$marker" =~ ^[a-z0-9][a-z0-9-]{0,39}$ ]] || die "--marker must be lower-case letters, digits and '-', got '$marker'"
[ -f "$body_file" ] || die "--body-file: no such file '$body_file'"
[[ "$repo" =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || die "--repo (or GITHUB_REPOSITORY) must be OWNER/NAME, got '$repo'"
[ -n "$pr" ] || [ -n "$pr_file" ] || die "give --pr N or --pr-file FILE"
[ -z "$pr" ] || [ -z "$pr_file" ] || die "give --pr or --pr-file, not both"
if [ -z "${GH_TOKEN:-}${GITHUB_TOKEN:-}${GH_ENTERPRISE_TOKEN:-}${GITHUB_ENTERPRISE_TOKEN:-}" ]; then
  die "set GH_TOKEN (or GH_ENTERPRISE_TOKEN with GH_HOST)"
fi

if [ -n "$pr_file" ]; then
  # Untrusted data: a JSON number or a decimal string, checked below.
  pr=$(jq -r '.number | if type == "number" or type == "string" then tostring else "invalid: \(tojson)" end' \
    "$pr_file" 2>/dev/null) || die "--pr-file: '$pr_file' is not a JSON object with a number"
fi
[[ "$pr" =~ ^[1-9][0-9]{0,9}$ ]] || die "not a pull request number: '$pr' (a positive integer is accepted)"

if [ -n "$expect_sha" ]; then
  [[ "$expect_sha" =~ ^[0-9a-f]{40}$ ]] || die "not a commit SHA: '$expect_sha'"
  head=$("${gh[@]}" api "repos/$repo/pulls/$pr" --jq .head.sha)
  if [ "$head" != "$expect_sha" ]; then
    echo "pull request #$pr head is $head, not $expect_sha: not commenting" \
      "(superseded run, or the PR number does not belong to this run)"
    exit 0
  fi
fi

line="<!-- cxrstudy-ci:$marker -->"
body=$(mktemp)
trap 'rm -f "$body"' EXIT
if [ "$(head -n 1 "$body_file")" != "$line" ]; then
  printf '%s\n' "$line" >"$body"
fi
cat "$body_file" >>"$body"

# --paginate follows the Link headers and prints one JSON array per page.
existing=$("${gh[@]}" api --paginate "repos/$repo/issues/$pr/comments?per_page=100" |
  jq -rs --arg author "$author" --arg line "$line" \
    'add // [] | map(select(.user.login == $author and (.body | startswith($line)))) | first | .id // empty')

if [ -n "$existing" ]; then
  url=$("${gh[@]}" api --method PATCH "repos/$repo/issues/comments/$existing" -F "body=@$body" --jq .html_url)
  echo "updated comment $url on #$pr"
else
  url=$("${gh[@]}" api --method POST "repos/$repo/issues/$pr/comments" -F "body=@$body" --jq .html_url)
  echo "created comment $url on #$pr"
fi
