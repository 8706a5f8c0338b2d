#!/usr/bin/env bash
# Set up (if needed) and run the demo job: examples/prompts.jsonl -> out/demo, local Ray, built-in model.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c "import pipelines, torch" 2>/dev/null || bash scripts/setup.sh
. .venv/bin/activate
pixelmill run examples/demo.yaml --mode overwrite "$@"
