#!/usr/bin/env bash
# The GPU suite (see benchmarks/gpu_suite.py): one table of ours vs the OpenMatch-style reference on this card.
#   bash benchmarks/gpu_suite.sh [--tiny] [--output results.json]
# Runs from the checkout without installing it (the GPU image has torch and transformers, maybe no faiss).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
