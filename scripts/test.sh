#!/usr/bin/env bash
# Set up (if needed), check the code (ruff, the import layers, mypy) and run the tests.
#   bash scripts/test.sh           everything (what CI runs)
#   bash scripts/test.sh --fast    the inner loop: checks + tests without Ray or subprocesses (-m "not slow")
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c "import pipelines, moto, torch, importlinter, mypy, hypothesis, datasets" 2>/dev/null || bash scripts/setup.sh
. .venv/bin/activate
fast=()
if [ "${1:-}" = "--fast" ]; then
    fast=(-m "not slow")
    shift
fi
ruff check .
lint-imports
mypy
python -m pytest -q "${fast[@]}" "$@"
