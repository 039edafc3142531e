#!/usr/bin/env bash
# Fails unless FILE holds exactly one image digest (sha256:<64 hex>).
set -euo pipefail
file="${1:?usage: require-digest.sh FILE}"
if ! grep -Eqx 'sha256:[0-9a-f]{64}' "$file"; then
  echo "$file does not hold an image digest (sha256:<64 hex>): did the build job push the image?" >&2
  exit 1
fi
