#!/usr/bin/env bash
# Creates .venv-triton (idempotent): the standalone `tritonserver` from the nvidia-pytriton wheel,
# numpy<2 and ONNX Runtime for its Python backend (requirements/triton.txt). The main .venv cannot
# hold them (numpy 2 there). Re-installs only when requirements/triton.txt is newer than the venv.
#
#   scripts/triton-venv.sh          # then: .venv/bin/python -m tests.service.triton_server --info
#
# Environment: PYTHON (interpreter to create the venv with, default python3; must be 3.11, the
# version the wheel's Python-backend stub is built for), TRITON_VENV (default .venv-triton).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${TRITON_VENV:-.venv-triton}"
python="${PYTHON:-python3}"
requirements=requirements/triton.txt
stamp="$venv/.installed"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt "$requirements" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ "$version" != "3.11" ]; then
    echo "triton-venv: $python is Python $version; the tritonserver Python backend needs 3.11 (set PYTHON=)" >&2
    exit 1
  fi
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"

# The binary must start: it needs the interpreter's own libpython3.11.so on LD_LIBRARY_PATH.
"$venv/bin/python" - <<'PY'
import pathlib, subprocess, sys, sysconfig, os
import pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
binary = root / "bin" / "tritonserver"
if not binary.is_file():
    sys.exit(f"triton-venv: no tritonserver binary in {root}")
env = dict(os.environ, LD_LIBRARY_PATH=":".join(filter(None, [sysconfig.get_config_var("LIBDIR"),
                                                              str(root / "external_libs"),
                                                              os.environ.get("LD_LIBRARY_PATH")])))
out = subprocess.run([str(binary), "--help"], env=env, capture_output=True, text=True, timeout=60)
if "--model-repository" not in out.stdout + out.stderr:
    sys.exit(f"triton-venv: {binary} does not start:\n{out.stderr[-2000:]}")
print(f"triton-venv: {binary} ready")
PY
touch "$stamp"
