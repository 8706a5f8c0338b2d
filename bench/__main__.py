"""Run every CPU benchmark in turn and print their ratios together: ``python -m bench [NAME ...]``.

Each benchmark runs in its own Python process (its own moto server and Ray runtime: a
Ray runtime started for one benchmark would keep the first moto endpoint in its workers'
environment), prints its own table and writes ``bench/results/<name>.json``;
``bench/results/summary.json`` collects the ratios.  About 26 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import RESULTS_DIR

BENCHMARKS = ("sink", "efficiency", "naive", "backends", "placement", "scaling", "regenerate", "pools")


def main(names: list[str]) -> None:
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    summary = {}
    for name in names or BENCHMARKS:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"bench.{name}"], check=True)
        with open(os.path.join(RESULTS_DIR, f"{name}.json")) as handle:
            result = json.load(handle)
        summary[name] = {"ratios": result.get("ratios", {}), "wall_s": round(time.perf_counter() - start, 1)}
    print("\n== summary ==")
    for name, entry in summary.items():
        for label, ratio in entry["ratios"].items():
            verdict = "met" if ratio["met"] else "MISSED"
            print(f"{name:10s} {label}: {ratio['value']:.2f} (target {ratio['target']}: {verdict})")
        print(f"{name:10s} wall {entry['wall_s']} s")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
