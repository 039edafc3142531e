#!/usr/bin/env bash
# Creates .venv-tf, a virtualenv holding TensorFlow (CPU) and numpy, used by `stagectl model build`
# to write the TF SavedModel and by the TF Serving tests. TensorFlow lives apart from .venv because
# it pulls protobuf 7.x while .venv pins protobuf 5.x (pulumi-policy).
#
# Exactly requirements/tf.txt (the lock of requirements/tf.in), through scripts/venv.sh: does
# nothing when .venv-tf is already synced to that lock. PYTHON sets the interpreter (3.11 or 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."

before="$(cat .venv-tf/.synced-lock 2>/dev/null || true)"
scripts/venv.sh tf
if [ "$before" != "$(cat .venv-tf/.synced-lock)" ]; then
  trap 'rm -f .venv-tf/.synced-lock' ERR  # a TensorFlow that does not import: sync and check again next time
  .venv-tf/bin/python -c 'import tensorflow as tf; print("tf-venv: TensorFlow", tf.__version__, "in .venv-tf")'
fi
