#!/usr/bin/env bash
# The whole test suite: lint, then every test (real sockets, real servers, real files).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
