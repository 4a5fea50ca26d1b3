#!/usr/bin/env bash
# The GPUs of this runner, when one host with several GPUs runs several runners (docs/scaling.md): a job container
# started with `--gpus all` sees every GPU of the host, so each runner takes the ones its name ends with:
#   ...-gpu3      CUDA_VISIBLE_DEVICES=3
#   ...-gpu4_5    CUDA_VISIBLE_DEVICES=4,5
# (appended to $GITHUB_ENV for the job's later steps). A name without that suffix: every GPU the job sees.
# Called by .github/workflows/gpu-study.yml; tested in tests/test_workflows.py.
set -euo pipefail

name=${RUNNER_NAME:-}
if [[ $name =~ -gpu([0-9]+(_[0-9]+)*)$ ]]; then
  devices=${BASH_REMATCH[1]//_/,}
  echo "runner $name: CUDA_VISIBLE_DEVICES=$devices"
  if [ -n "${GITHUB_ENV:-}" ]; then
    echo "CUDA_VISIBLE_DEVICES=$devices" >>"$GITHUB_ENV"
  fi
else
  echo "runner ${name:-(unnamed)}: every GPU the job sees (a runner named ...-gpuN gets GPU N alone)"
fi
