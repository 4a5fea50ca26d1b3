#!/usr/bin/env bash
# Commit the GPU study's results to a new branch, open a pull request for it
# and put the metrics comment on that pull request. Called by the `publish`
# job of .github/workflows/gpu-study.yml; tested in tests/test_workflows.py
# against a local git remote and a fake GitHub API.
#
#   publish_study.sh PATH...        # files/dirs to commit (missing ones are skipped)
#
# Environment:
#   STUDY_BRANCH   branch to create, e.g. study/run-123 (required)
#   BASE_BRANCH    pull request base (required)
#   COMMENT_FILE   body from comment_body.py (required)
#   PR_TITLE       default "GPU study results"
#   GITHUB_REPOSITORY  OWNER/NAME (set by GitHub Actions)
#   GH_TOKEN       token for opening the pull request (gh's variable; with
#                  GH_HOST set to another host, GH_ENTERPRISE_TOKEN)
#   COMMENT_TOKEN  token for the comment (default: the one above)
#   GITHUB_OUTPUT  if set, receives changed=true|false and pr=N
#   GH             the gh command (default gh)
set -euo pipefail

: "${STUDY_BRANCH:?set STUDY_BRANCH}"
: "${BASE_BRANCH:?set BASE_BRANCH}"
: "${COMMENT_FILE:?set COMMENT_FILE}"
[ "$#" -gt 0 ] || { echo "usage: $0 PATH..." >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a gh <<<"${GH:-gh}"
: "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY}"
repo=$GITHUB_REPOSITORY
title=${PR_TITLE:-GPU study results}

output() {
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf '%s\n' "$1" >>"$GITHUB_OUTPUT"
  fi
}

paths=()
for p in "$@"; do
  if [ -e "$p" ]; then
    paths+=("$p")
  else
    echo "skipping missing path: $p"
  fi
done
[ "${#paths[@]}" -gt 0 ] || { echo "error: none of the paths exist" >&2; exit 1; }

git add --all -- "${paths[@]}"
if git diff --cached --quiet; then
  echo "The study changed none of: ${paths[*]}; nothing to publish."
  output changed=false
  exit 0
fi

git switch --create "$STUDY_BRANCH"
git -c user.name="github-actions[bot]" \
    -c user.email="41898282+github-actions[bot]@users.noreply.github.com" \
    commit --quiet -m "$title" -m "Automated commit by the gpu-study workflow."
git push origin "HEAD:refs/heads/${STUDY_BRANCH}"

body=$(mktemp)
trap 'rm -f "$body"' EXIT
{
  echo "Results of the GPU study (NIH profile) on \`${BASE_BRANCH}\`: dvc.lock, the report and the metrics."
  echo "The outputs were pushed to the DVC remote by the same run; the metrics diff is in the comment below."
} >"$body"

# The open pull request from this branch, if a rerun already made one; else a new one.
owner=${repo%%/*}
pr=$("${gh[@]}" api "repos/$repo/pulls?head=$owner:$STUDY_BRANCH&base=$BASE_BRANCH&state=open" --jq '.[0].number // empty')
if [ -z "$pr" ]; then
  pr=$("${gh[@]}" api --method POST "repos/$repo/pulls" -f "title=$title" -f "head=$STUDY_BRANCH" \
    -f "base=$BASE_BRANCH" -F "body=@$body" --jq .number)
fi
echo "pull request #$pr"

comment_token=${COMMENT_TOKEN:-${GH_TOKEN:-${GH_ENTERPRISE_TOKEN:-}}}
if [ -n "${GH_HOST:-}" ] && [ "${GH_HOST}" != github.com ]; then
  GH_ENTERPRISE_TOKEN=$comment_token "$here/upsert_comment.sh" --repo "$repo" \
    --pr "$pr" --marker study --body-file "$COMMENT_FILE"
else
  GH_TOKEN=$comment_token "$here/upsert_comment.sh" --repo "$repo" \
    --pr "$pr" --marker study --body-file "$COMMENT_FILE"
fi

output changed=true
output "pr=$pr"
