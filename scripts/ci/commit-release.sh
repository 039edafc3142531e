#!/usr/bin/env bash
# Records what a job deployed: commits FILE... to the default branch as the release bot and
# pushes. The commit carries [skip ci], so it starts no pipeline.
#
#   commit-release.sh MESSAGE FILE...
#
# The job's tree is never used as a whole: jobs receive other stages' files as artifacts, so it
# differs from any commit. Only the named files are recorded, and each is merged three ways
# (git merge-file) from the job's commit (CI_COMMIT_SHA), the job's copy and the branch as it is
# now, so a change merged to main while the job ran is kept. The commit is built on the fetched
# branch with a temporary index (the work tree and its other changes are left as they are) and
# pushed; when main moved meanwhile the push is refused and the whole is redone on the new main.
# A conflict (main changed the same lines) stops with the files to record by hand.
#
# Push URL: CI_SERVER_URL (its scheme, host, port and path kept) + CI_PROJECT_PATH, with the
# protected GITLAB_RELEASE_TOKEN: a project access token (Maintainer, write_repository) allowed to
# push to the protected default branch.
set -euo pipefail
message="${1:?usage: commit-release.sh MESSAGE FILE...}"
shift
[ "$#" -gt 0 ] || { echo "commit-release.sh: name the files to record" >&2; exit 2; }
branch="${CI_DEFAULT_BRANCH:?CI_DEFAULT_BRANCH is not set}"
base="${CI_COMMIT_SHA:?CI_COMMIT_SHA is not set}"
server="${CI_SERVER_URL:?CI_SERVER_URL is not set}"
token="${GITLAB_RELEASE_TOKEN:?GITLAB_RELEASE_TOKEN is not set (a protected variable: this job must run on the protected default branch)}"
remote="${server%%://*}://release-bot:${token}@${server#*://}/${CI_PROJECT_PATH:?CI_PROJECT_PATH is not set}.git"

export GIT_AUTHOR_NAME="release bot" GIT_COMMITTER_NAME="release bot"
export GIT_AUTHOR_EMAIL="release-bot@${CI_SERVER_HOST:-gitlab.local}" GIT_COMMITTER_EMAIL="release-bot@${CI_SERVER_HOST:-gitlab.local}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
blob_at() {  # blob_at REV PATH OUT: the file at REV, empty when it is not there
  if git cat-file -e "$1:$2" 2>/dev/null; then git show "$1:$2" > "$3"; else : > "$3"; fi
}

for attempt in 1 2 3 4 5; do
  git fetch --quiet "$remote" "refs/heads/$branch"
  head="$(git rev-parse FETCH_HEAD)"
  export GIT_INDEX_FILE="$work/index"
  git read-tree "$head"
  changed=0
  for file in "$@"; do
    [ -f "$file" ] || { echo "commit-release.sh: $file does not exist" >&2; exit 2; }
    blob_at "$base" "$file" "$work/base"
    blob_at "$head" "$file" "$work/theirs"
    cp "$file" "$work/ours"
    if ! git merge-file --quiet -L job -L "$base" -L "$branch" "$work/ours" "$work/base" "$work/theirs"; then
      echo "commit-release.sh: $file changed on $branch while this job ran, in the same lines: record the" \
           "release by hand (this job's copy is in its artifacts)" >&2
      exit 1
    fi
    if ! cmp -s "$work/ours" "$work/theirs"; then
      blob="$(git hash-object -w "$work/ours")"
      git update-index --add --cacheinfo "100644,$blob,$file"
      changed=1
    fi
  done
  if [ "$changed" = 0 ]; then
    unset GIT_INDEX_FILE
    echo "nothing to record: $* already as deployed on $branch"
    exit 0
  fi
  commit="$(git commit-tree "$(git write-tree)" -p "$head" -m "$message [skip ci]")"
  unset GIT_INDEX_FILE
  if git push --quiet "$remote" "$commit:refs/heads/$branch"; then
    echo "recorded $* on $branch as $(git rev-parse --short "$commit")"
    exit 0
  fi
  echo "push refused (attempt $attempt): $branch moved, redoing the commit on it" >&2
  sleep $((attempt * 2))
done
echo "commit-release.sh: could not push to $branch after 5 attempts" >&2
exit 1
