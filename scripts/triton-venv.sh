#!/usr/bin/env bash
# Creates .venv-triton: the standalone `tritonserver` from the nvidia-pytriton wheel, numpy<2 and
# ONNX Runtime for its Python backend (requirements/triton.in, locked in requirements/triton.txt).
# The main .venv cannot hold them (numpy 2 there). Synced through scripts/venv.sh: does nothing
# when .venv-triton already matches the lock.
#
#   scripts/triton-venv.sh          # then: .venv/bin/python -m tests.service.triton_server --info
#
# Environment: PYTHON (interpreter to create the venv with, default python3; must be 3.11, the
# version the wheel's Python-backend stub is built for).
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if [ ! -x .venv-triton/bin/python ]; then
  version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ "$version" != "3.11" ]; then
    echo "triton-venv: $python is Python $version; the tritonserver Python backend needs 3.11 (set PYTHON=)" >&2
    exit 1
  fi
fi
before="$(cat .venv-triton/.synced-lock 2>/dev/null || true)"
scripts/venv.sh triton
[ "$before" != "$(cat .venv-triton/.synced-lock)" ] || exit 0

# The binary must start: it needs the interpreter's own libpython3.11.so on LD_LIBRARY_PATH. If it
# does not, the stamp goes, so the next run syncs and checks again.
trap 'rm -f .venv-triton/.synced-lock' ERR
.venv-triton/bin/python - <<'PY'
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
