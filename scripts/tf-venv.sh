#!/usr/bin/env bash
# Creates .venv-tf, a virtualenv holding TensorFlow (CPU) and numpy, used by `stagectl model build`
# to write the TF SavedModel and by the TF Serving tests. TensorFlow lives apart from .venv because
# it pulls protobuf 7.x while .venv pins protobuf 5.x (pulumi-policy).
#
# Idempotent: does nothing when .venv-tf already holds what requirements/tf.txt asks for (a stamp
# newer than that file). TF_VENV overrides the location; PYTHON the interpreter (3.11 or 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${TF_VENV:-.venv-tf}"
python="${PYTHON:-python3}"
requirements="requirements/tf.txt"
stamp="$venv/.installed"

# (find_spec, not an import: importing TensorFlow takes seconds)
if [ -f "$stamp" ] && [ "$stamp" -nt "$requirements" ] \
   && "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("tensorflow") is None)' 2>/dev/null; then
  exit 0
fi

test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$requirements"
"$venv/bin/python" -c 'import tensorflow as tf; print("tf-venv: TensorFlow", tf.__version__, "in '"$venv"'")'
touch "$stamp"
