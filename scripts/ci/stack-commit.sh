#!/usr/bin/env bash
# Which commit a stack was last deployed from, kept as the stack tag aistack:commit.
#
#   stack-commit.sh check STACK    # before `pulumi up`: refuse a commit older than the deployed one
#   stack-commit.sh record STACK   # after `pulumi up`: tag the stack with CI_COMMIT_SHA
#
# A promotion job re-applies its own pipeline's infrastructure code, so running it from an old
# pipeline would roll the stage's infrastructure back. `check` passes when the stack has no tag yet
# (first deploy) or its commit is an ancestor of (or equal to) CI_COMMIT_SHA; otherwise it stops,
# unless ALLOW_OLDER_COMMIT=true (a deliberate rollback). Needs the history (GIT_DEPTH: 0).
set -euo pipefail
action="${1:?usage: stack-commit.sh check|record STACK}"
stack="${2:?usage: stack-commit.sh check|record STACK}"
commit="${CI_COMMIT_SHA:?CI_COMMIT_SHA is not set}"
tag=aistack:commit
case "$action" in
  record)
    pulumi stack tag set "$tag" "$commit" --stack "$stack"
    echo "$stack: deployed from $commit"
    ;;
  check)
    deployed="$(pulumi stack tag get "$tag" --stack "$stack" 2>/dev/null || true)"
    if [ -z "$deployed" ]; then
      echo "$stack: no deployed commit recorded yet"
      exit 0
    fi
    if [ "$deployed" = "$commit" ]; then
      echo "$stack: redeploying $commit"
      exit 0
    fi
    if ! git cat-file -e "$deployed^{commit}" 2>/dev/null; then
      git fetch --quiet origin "$deployed" 2>/dev/null || true
    fi
    if git merge-base --is-ancestor "$deployed" "$commit" 2>/dev/null; then
      echo "$stack: $deployed -> $commit"
      exit 0
    fi
    if [ "${ALLOW_OLDER_COMMIT:-false}" = "true" ]; then
      echo "$stack: deploying $commit over $deployed, which it does not contain (ALLOW_OLDER_COMMIT=true)" >&2
      exit 0
    fi
    echo "refusing: $stack was deployed from $deployed, which $commit does not contain: this pipeline's" \
         "infrastructure code is older. Promote from the newest main pipeline, or run this job with" \
         "ALLOW_OLDER_COMMIT=true to roll back deliberately." >&2
    exit 1
    ;;
  *) echo "stack-commit.sh: unknown action $action (check or record)" >&2; exit 2 ;;
esac
