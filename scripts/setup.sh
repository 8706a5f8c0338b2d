#!/usr/bin/env bash
# Create .venv with the CPU build of torch and pixelmill (editable) plus its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# Pin the CPU build first (requirements-cpu.txt): any other torch spec downloads gigabytes of CUDA wheels.
python -m pip install --quiet -r requirements-cpu.txt
python -m pip install --quiet -e ".[test]"
