#!/usr/bin/env bash
# Creates or updates one of the project's virtualenvs from its lock file, exactly: every package at
# the locked version with its sha256 checked, and nothing that the lock does not list.
#
#   scripts/venv.sh runtime   # .venv from requirements.txt (make demo; what pulumi up runs in)
#   scripts/venv.sh dev       # .venv from requirements/dev.txt (make test: runtime + tests and tools)
#   scripts/venv.sh tf        # .venv-tf from requirements/tf.txt (TensorFlow)
#   scripts/venv.sh triton    # .venv-triton from requirements/triton.txt (tritonserver)
#   scripts/venv.sh kserve    # .venv-kserve from requirements/kserve.txt (KServe's Python client)
#
# The installer is uv (requirements/bootstrap.txt pins it, and pip, with hashes; pip installs it
# into .venv first). A stamp in the virtualenv records the sha256 of the lock it was synced to, so
# an unchanged lock costs nothing; `runtime` also accepts a .venv synced to dev.txt, whose pins
# include every pin of requirements.txt (tests/test_locks.py). The project itself is installed
# into .venv in editable mode without dependencies (the `stagectl` command).
#
# Environment: PYTHON (interpreter for new virtualenvs, default python3: 3.11 or 3.12; the triton
# one needs 3.11), UV_CACHE_DIR (uv's download cache).
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
kind="${1:?usage: scripts/venv.sh runtime|dev|tf|triton|kserve}"
case "$kind" in
  runtime) venv=.venv;         lock=requirements.txt;         also_ok=requirements/dev.txt; editable=1 ;;
  dev)     venv=.venv;         lock=requirements/dev.txt;     also_ok="";                   editable=1 ;;
  tf)      venv=.venv-tf;      lock=requirements/tf.txt;      also_ok="";                   editable=0 ;;
  triton)  venv=.venv-triton;  lock=requirements/triton.txt;  also_ok="";                   editable=0 ;;
  kserve)  venv=.venv-kserve;  lock=requirements/kserve.txt;  also_ok="";                   editable=0 ;;
  *) echo "venv.sh: unknown environment '$kind' (runtime, dev, tf, triton or kserve)" >&2; exit 2 ;;
esac
stamp="$venv/.synced-lock"

digest() { sha256sum "$1" | cut -d' ' -f1; }
current() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$1 $(digest "$1")" ]; }

if current "$lock" || { [ -n "$also_ok" ] && current "$also_ok"; }; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' || {
    echo "venv.sh: $python is Python $("$python" -c 'import platform; print(platform.python_version())'); the project supports 3.11 and 3.12 (set PYTHON=)" >&2
    exit 1
  }
  "$python" -m venv "$venv"
fi

# uv, from the bootstrap lock, into .venv (the other virtualenvs are synced by .venv's uv)
uv=.venv/bin/uv
if [ ! -x "$uv" ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r requirements/bootstrap.txt
fi

"$uv" pip sync --quiet --python "$venv/bin/python" --require-hashes "$lock"
if [ "$editable" = 1 ]; then
  # the build backend is in the lock: nothing is downloaded to install the project itself
  "$uv" pip install --quiet --python "$venv/bin/python" --no-deps --no-build-isolation -e .
fi
echo "$lock $(digest "$lock")" > "$stamp"
echo "venv.sh: $venv synced to $lock"
