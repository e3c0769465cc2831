#!/usr/bin/env bash
# Create .venv/ in the repository root and install spikeloop with everything it needs.
# Idempotent: re-runs only when pyproject.toml or requirements.lock changed. torch is pinned
# to 2.13.0 and installed first, so no other package can pull in a different (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=.venv/.spikeloop-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing packages into .venv (torch==2.13.0 CPU first)"
    .venv/bin/python -m pip install --quiet "pip==26.3"
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    # Exactly the versions CI ran (requirements.lock), never a newer major.
    .venv/bin/python -m pip install --quiet -c requirements.lock -e ".[test,nwb]"
    .venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    echo "$want" > "$stamp"
fi
