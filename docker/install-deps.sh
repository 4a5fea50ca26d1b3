#!/usr/bin/env bash
# Install the locked runtime dependencies (requirements.lock: every package
# pinned with its hashes) into the active Python environment. Used by
# docker/Dockerfile; exercised by tests/test_docker.py and tests/test_locks.py.
#
#   install-deps.sh [--print] cuda|cpu REQUIREMENTS_FILE
#
# --print: print the requirements installed after torch (see below) and stop.
#
# Where torch and torchvision come from: TORCH_INDEX_URL, when not empty, is
# asked for the pinned torch/torchvision versions first (local version labels
# such as "+cpu" allowed), then the whole file is installed from PyPI. pip keeps
# those builds because a public pin such as torch==X matches X+cpu (PEP 440
# ignores the local label), so nothing else is downloaded for them.
#
# With TORCH_INDEX_URL set, torch and torchvision are the one part not checked
# against the lock's hashes (that index's builds are other files than PyPI's),
# and they are left out of the second install; the cpu variant also leaves out
# the CUDA libraries (nvidia-*, cuda-*, triton) that PyPI's torch needs and the
# CPU build does not. Without TORCH_INDEX_URL the whole lock is installed.
#
# cuda: TORCH_INDEX_URL defaults to empty: everything from PyPI. PyPI's Linux
#       torch/torchvision wheels depend on the CUDA runtime wheels (cuda-toolkit,
#       nvidia-cudnn, nccl, ...), so the image needs no CUDA base: only the host
#       driver, mounted by --gpus.
# cpu:  TORCH_INDEX_URL defaults to PyTorch's CPU-only index (no CUDA
#       libraries). Set it empty where that index cannot be reached: PyPI's
#       wheels then run on the CPU too (with the CUDA libraries unused).
#
# Environment:
#   PYTHON             interpreter to install into (default: python)
#   PIP_INSTALL_FLAGS  extra flags for every `pip install` (tests use
#                      "--dry-run --no-index" to resolve against a venv)
#   TORCH_INDEX_URL    see above (unset = the variant's default, empty = PyPI)
#   BUILD_CA           a PEM file of extra CA certificates to trust for this
#                      run, added to the system bundle in a temporary file
#                      (default: /run/secrets/build_ca, the Dockerfile's build
#                      secret, used only when present)
#   PIP_CHECK          set to 0 to skip the final `pip check`
set -euo pipefail

usage() {
  echo "usage: $0 [--print] cuda|cpu REQUIREMENTS_FILE" >&2
  exit 2
}

print_only=0
if [ "${1:-}" = --print ]; then
  print_only=1
  shift
fi
[ "$#" -eq 2 ] || usage
variant=$1
requirements=$2
[ -f "$requirements" ] || { echo "error: $requirements not found" >&2; exit 2; }

python=${PYTHON:-python}
case "$variant" in
  cpu) torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu} ;;
  *) torch_index=${TORCH_INDEX_URL-} ;;
esac
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
  cuda | cpu) ;;
  *) usage ;;
esac

# The requirements file without the blocks (a pin, its hashes and comments) of
# the packages that torch_index provides or the CPU build does not need.
after_torch() {
  local drop='^$'
  if [ -n "$torch_index" ]; then
    drop='^(torch|torchvision)=='
    if [ "$variant" = cpu ]; then drop='^((torch|torchvision|triton)==|nvidia-|cuda-)'; fi
  fi
  awk -v drop="$drop" '/^[A-Za-z0-9]/ { skip = ($0 ~ drop) } /^#/ { skip = 0 } !skip { print }' "$requirements"
}

if [ "$print_only" = 1 ]; then
  after_torch
  exit 0
fi

build_ca=${BUILD_CA:-/run/secrets/build_ca}
if [ -s "$build_ca" ]; then
  bundle=$(mktemp)
  trap 'rm -f "$bundle"' EXIT
  system_bundle=/etc/ssl/certs/ca-certificates.crt
  if [ -f "$system_bundle" ]; then cat "$system_bundle" >"$bundle"; fi
  cat "$build_ca" >>"$bundle"
  export PIP_CERT="$bundle"
  echo "trusting the extra CA certificates of $build_ca for this install"
fi

if [ -n "$torch_index" ]; then
  torch=$(pin_of torch)
  torchvision=$(pin_of torchvision)
  pip_install --index-url "$torch_index" "$torch" "$torchvision"
fi
if [ -n "$torch_index" ]; then
  rest=$(mktemp)
  trap 'rm -f "$rest" "${bundle:-}"' EXIT
  after_torch >"$rest"
  pip_install --requirement "$rest"
else
  pip_install --requirement "$requirements"
fi

if [ "${PIP_CHECK:-1}" != 0 ]; then
  "$python" -m pip check
fi
