#!/usr/bin/env bash
# Install the pinned runtime dependencies (requirements.txt) into the active
# Python environment. Used by docker/Dockerfile; exercised by tests/test_docker.py.
#
#   install-deps.sh cuda|cpu REQUIREMENTS_FILE
#
# cuda: everything from PyPI. PyPI's Linux torch/torchvision wheels depend on
#       the CUDA runtime wheels (cuda-toolkit, nvidia-cudnn, nccl, ...), so the
#       image needs no CUDA base: only the host driver, mounted by --gpus.
# cpu:  the same pinned torch/torchvision versions from PyTorch's CPU-only
#       index first (local version "+cpu", no CUDA libraries), then the whole
#       file from PyPI. pip keeps the +cpu builds because a public pin such as
#       torch==X matches X+cpu (PEP 440 ignores the local label), so nothing
#       else is downloaded for them.
#
# Environment:
#   PYTHON               interpreter to install into (default: python)
#   PIP_INSTALL_FLAGS    extra flags for every `pip install` (tests use
#                        "--dry-run --no-index" to resolve against a venv)
#   TORCH_CPU_INDEX_URL  CPU wheel index (default: PyTorch's /whl/cpu)
#   PIP_CHECK            set to 0 to skip the final `pip check`
set -euo pipefail

usage() {
  echo "usage: $0 cuda|cpu REQUIREMENTS_FILE" >&2
  exit 2
}

[ "$#" -eq 2 ] || usage
variant=$1
requirements=$2
[ -f "$requirements" ] || { echo "error: $requirements not found" >&2; exit 2; }

python=${PYTHON:-python}
cpu_index=${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}
read -r -a extra <<<"${PIP_INSTALL_FLAGS:-}"

# Print "name==version" for an exactly pinned requirement, or fail.
pin_of() {
  local name=$1 line
  line=$(sed -nE "s/^[[:space:]]*(${name})[[:space:]]*==[[:space:]]*([^[:space:];#]+).*$/\1==\2/Ip" \
    "$requirements" | head -n 1)
  if [ -z "$line" ]; then
    echo "error: $requirements has no exact pin (${name}==X) for ${name}" >&2
    return 1
  fi
  printf '%s\n' "$line"
}

pip_install() {
  "$python" -m pip install "${extra[@]}" "$@"
}

case "$variant" in
  cuda)
    pip_install --requirement "$requirements"
    ;;
  cpu)
    torch=$(pin_of torch)
    torchvision=$(pin_of torchvision)
    pip_install --index-url "$cpu_index" "$torch" "$torchvision"
    pip_install --requirement "$requirements"
    ;;
  *)
    usage
    ;;
esac

if [ "${PIP_CHECK:-1}" != 0 ]; then
  "$python" -m pip check
fi
