#!/usr/bin/env bash
# Known vulnerabilities in the locked set (requirements.lock and torch==2.13.0), checked by
# pip-audit against PyPI's vulnerability data. pip-audit lives in its own .venv-audit/, so
# it never changes what the project runs with. --strict: a package that could not be
# audited fails the run instead of passing unseen. Documented exceptions (docs/security.md)
# are passed as --ignore-vuln ID arguments: scripts/audit.sh --ignore-vuln PYSEC-....
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-audit/bin/pip-audit ]; then
    echo "[audit] creating .venv-audit with pip-audit"
    "$PY" -m venv .venv-audit
    .venv-audit/bin/python -m pip install --quiet "pip-audit==2.10.1"
fi
{ grep -v -e '^#' -e '^$' requirements.lock; echo "torch==2.13.0"; } > .venv-audit/locked.txt
# Every version is pinned, so nothing is resolved or installed: only the look-ups.
exec .venv-audit/bin/pip-audit --strict --no-deps --disable-pip -r .venv-audit/locked.txt "$@"
