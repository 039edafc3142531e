#!/usr/bin/env bash
# Records what a job deployed: commits the given files to the default branch as the release
# bot and pushes (rebasing on concurrent changes). Pipelines of that commit are skipped.
set -euo pipefail
message="${1:?usage: commit-release.sh MESSAGE FILE...}"
shift
if git diff --quiet -- "$@"; then
  echo "nothing to record: $* unchanged"
  exit 0
fi
git config user.name "release bot"
git config user.email "release-bot@${CI_SERVER_HOST:-gitlab.local}"
git add -- "$@"
git commit -m "$message [skip ci]"
remote="${RELEASE_REMOTE:-https://release-bot:${GITLAB_PROJECT_TOKEN:?GITLAB_PROJECT_TOKEN is not set}@${CI_SERVER_HOST}/${CI_PROJECT_PATH}.git}"
for attempt in 1 2 3; do
  if git pull --rebase "$remote" "$CI_DEFAULT_BRANCH" && git push "$remote" "HEAD:$CI_DEFAULT_BRANCH"; then
    exit 0
  fi
  echo "push failed (attempt $attempt), retrying" >&2
  sleep $((attempt * 5))
done
exit 1
