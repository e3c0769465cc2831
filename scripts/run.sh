#!/usr/bin/env bash
# The main job: control plane + simulated motor cortex + a closed-loop session.
# Prints live decoded vs true velocity with a running R² until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/spikeloop run "$@"
