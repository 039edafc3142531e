#!/usr/bin/env bash
# Fails unless every FILE holds exactly one image digest (sha256:<64 hex>); names each one that does not.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: require-digest.sh FILE..." >&2; exit 2; }
status=0
for file in "$@"; do
  if [ ! -f "$file" ]; then
    echo "$file is missing: did the build job build and push that flavour of the image (STAGES)?" >&2
    status=1
  elif ! grep -Eqx 'sha256:[0-9a-f]{64}' "$file"; then
    echo "$file does not hold an image digest (sha256:<64 hex>): did the build job push the image?" >&2
    status=1
  fi
done
exit "$status"
