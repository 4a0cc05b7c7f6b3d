#!/usr/bin/env bash
# tools/parity/make_old_torch_fixture.sh — rebuilds tests/fixtures/old-torch-checkpoint: a small
# open_clip model whose `model.state_dict()` is saved by a torch release other than the pinned one,
# with the embeddings that open_clip computes under that same torch.
#
# The point is a checkpoint written by somebody else's torch, not by our own pinned one: our reader
# (src/model/torch_zip.rs) must follow the file format, not one release's habits. The venv is a
# throwaway under /tmp (never the project's .venv); the torch wheel pulls the nvidia-* packages from
# PyPI (a few GB), once.
#
# Usage: tools/parity/make_old_torch_fixture.sh [OUT_DIR]   (default tests/fixtures/old-torch-checkpoint)
# Env:   OLD_TORCH_VENV (default /tmp/echovault-old-torch), OLD_TORCH_PYTHON (a Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
out=${1:-$root/tests/fixtures/old-torch-checkpoint}
venv=${OLD_TORCH_VENV:-/tmp/echovault-old-torch}
py=${OLD_TORCH_PYTHON:-python3}

# torch 2.5.1 (October 2024) is six minor releases before the pinned 2.11.0 and the newest torch
# whose default torch.load still unpickled arbitrary globals; torchvision is its pair, and the
# open_clip/timm releases are the project's (both still support torch 2.5).
pins=(torch==2.5.1 torchvision==0.20.1 open_clip_torch==3.3.0 timm==1.0.31 numpy==2.1.3 safetensors==0.8.0)

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q "${pins[@]}"
"$venv/bin/python" -c 'import torch; assert torch.__version__.startswith("2.5.1"), torch.__version__'

mkdir -p "$out"
"$venv/bin/python" "$root/tools/parity/old_torch_fixture.py" "$out"
(cd "$out" && sha256sum open_clip_pytorch_model.bin open_clip_config.json expected.json)
