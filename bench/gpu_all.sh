#!/usr/bin/env bash
# Every GPU measurement of issue 20 in one call, < 8 minutes on one H200 (bench/README.md: "The GPU run"):
#   1. bench/gpu_sd_turbo.py --quick   the generate path alone: bare diffusers, fast paths, tiny VAE  (<= 150 s)
#   2. pytest -m gpu                   the GPU tests (no Ray on that machine; they need none)         (<= 75 s)
#   3. bench/gpu_stage.py              pixelmill's own generate pool, no Ray, vs. the bare loop       (<= 225 s)
# then one JSON (gpu_all.json: each step's exit code and seconds, both benchmarks' results, the tests'
# summary) and a printed table, all in $OUT (default bench/results/gpu).
#
# Wheels in .whl/ (diffusers and what that machine lacks) are installed first, as the device notes say,
# when diffusers or pydantic is missing.  PYTHON=... picks the interpreter (default python3).
# Usage: bash bench/gpu_all.sh            on the GPU machine; fails fast with "no CUDA" anywhere else
#        bash bench/gpu_all.sh --smoke    on CPU: both benchmarks' --smoke, the GPU tests (they skip)
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_all.log") 2>&1
PY=${PYTHON:-python3}
TOTAL_S=${GPU_ALL_TOTAL_S:-470}  # the whole script's wall budget; each step gets at most what is left
if ! "$PY" -c "import diffusers, pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_all.sh: installing the carried wheels (.whl/) failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ $SMOKE = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_all.sh: no CUDA device (torch.cuda.is_available() is False): run it on the GPU machine," \
         "or 'bash bench/gpu_all.sh --smoke' for the CPU check" >&2
    exit 2
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
RCS=""
step() {  # step NAME SECONDS COMMAND...: run COMMAND under timeout min(SECONDS, what is left), keep rc and seconds
    local name=$1 want=$2; shift 2
    local left=$((TOTAL_S - SECONDS)) begin=$SECONDS rc
    [ "$want" -gt "$left" ] && want=$left
    if [ "$want" -lt 10 ]; then echo "== $name: skipped, ${left}s left"; RCS="$RCS $name=skipped:0"; return; fi
    echo "== $name (timeout ${want}s)"
    timeout --kill-after=10 "$want" "$@"; rc=$?
    echo "== $name: exit $rc after $((SECONDS - begin))s"
    RCS="$RCS $name=$rc:$((SECONDS - begin))"
}
GPU_TESTS=$(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests | sort | tr '\n' ' ')
if [ $SMOKE = 1 ]; then
    step bench 150 "$PY" bench/gpu_sd_turbo.py --smoke --out "$OUT/gpu_bench.json"
    step tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml "$OUT/gpu_tests.xml" $GPU_TESTS
    step stage 225 "$PY" bench/gpu_stage.py --smoke --bench-json "$OUT/gpu_bench.json" --out "$OUT/gpu_stage.json"
else
    step bench 150 "$PY" bench/gpu_sd_turbo.py --quick --budget-s 120 --grace-s 15 --out "$OUT/gpu_bench.json"
    step tests 75 "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml "$OUT/gpu_tests.xml" $GPU_TESTS
    step stage 225 "$PY" bench/gpu_stage.py --budget-s 200 --grace-s 15 --batch "${GPU_STAGE_BATCH:-16}" \
        --bench-json "$OUT/gpu_bench.json" --out "$OUT/gpu_stage.json"
fi
# One JSON and a table of what the steps left; exits 1 if any step failed.
"$PY" - "$OUT" $RCS <<'PYTHON'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, steps = Path(sys.argv[1]), {}
for item in sys.argv[2:]:
    name, _, rest = item.partition("=")
    rc, _, seconds = rest.partition(":")
    steps[name] = {"rc": rc, "seconds": int(seconds)}
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None
tests = None
if (out / "gpu_tests.xml").exists():
    suite = ET.parse(out / "gpu_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
summary = {"steps": steps, "tests": tests, "bench": load("gpu_bench.json"), "stage": load("gpu_stage.json")}
(out / "gpu_all.json").write_text(json.dumps(summary, indent=2))
print("\n== gpu_all summary (" + str(out / "gpu_all.json") + ")")
for name, step in steps.items():
    print(f"step {name:<6} exit {step['rc']:<8} {step['seconds']:>4}s")
print("gpu tests:", tests)
bench = summary["bench"] or {}
for key, row in bench.get("variants", {}).items():
    print(f"bench {key}: {row['label']:<44} batch {row['batch']:>3} {row['images_per_s']:9.2f} img/s "
          f"MFU {100 * row['mfu']:.2f}%")
print("bench sweeps (img/s by batch):", bench.get("sweeps"))
stage = summary["stage"] or {}
for config, row in stage.get("configs", {}).items():
    bare = stage["bare"][row["vae"]]
    print(f"stage {config:<20} {row['images_per_s']:9.2f} img/s, bare {bare['images_per_s']:.2f} "
          f"(bench JSON {bare['bench_json']}), efficiency {row['efficiency']:.3f}, "
          f"busy {row['busy_fraction']}, rows {row['rows']}, capped {row['capped']}")
sys.exit(0 if all(step["rc"] == "0" for step in steps.values()) else 1)
PYTHON
