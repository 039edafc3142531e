#!/usr/bin/env bash
# Installs what the test suite needs beyond the Python packages, once:
#   - the Debian packages listed in requirements/apt.txt;
#   - the npm packages of every test folder that has a package-lock.json (validators, runners);
#   - the TensorFlow, Triton and KServe-client virtualenvs, and the Pulumi CLI built from its Go module.
set -euo pipefail
cd "$(dirname "$0")/.."

install_debian_packages() {
  local wanted missing pkg
  mapfile -t wanted < <(grep -v '^\s*#' requirements/apt.txt | sed 's/\s*#.*//' | grep -v '^\s*$' || true)
  missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need root to install: ${missing[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_npm_packages() {
  local lock dir
  while IFS= read -r lock; do
    dir="$(dirname "$lock")"
    if [ ! -d "$dir/node_modules" ] || [ "$lock" -nt "$dir/node_modules" ]; then
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
  done < <(find tests -name package-lock.json -not -path '*/node_modules/*' | sort)
}

install_debian_packages
install_npm_packages
scripts/tf-venv.sh
scripts/triton-venv.sh
scripts/venv.sh kserve
scripts/pulumi-cli.sh >/dev/null
