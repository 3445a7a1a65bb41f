"""Medians and ranges of repeated `scripts/bench.py` runs, and the ratios the issues ask about.

Each JSONL file is one whole bench run (one JSON line per case); a ratio is taken within each run, then its
median and range over the runs are printed, as a Markdown table.

    for i in 1 2 3; do python scripts/bench.py > run$i.jsonl; done
    python scripts/bench_summary.py run1.jsonl run2.jsonl run3.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# (numerator case, denominator case): ratios of samples/s within one run.
RATIOS = [("vgg8b_train", "torch_fp32_vgg8b_train"), ("vgg8b_train_real", "vgg8b_train"),
          ("vgg8b_mnist_nitro_train", "vgg8b_mnist_train_real"), ("mlp1_train", "torch_fp32_mlp1_train")]


def spread(values: list[float], digits: int) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    runs = [{d["case"]: d for d in map(json.loads, p.read_text().splitlines()) if "samples_per_s" in d}
            for p in args.runs]
    cases = [c for c in runs[0] if all(c in r for r in runs)]
    print(f"{len(runs)} runs; median (min–max)\n")
    print("| case | samples/s | s/step | peak RSS MB |\n|---|---:|---:|---:|")
    for case in cases:
        rate = spread([r[case]["samples_per_s"] for r in runs], 1)
        step = spread([r[case]["step_seconds"] for r in runs], 4) if "step_seconds" in runs[0][case] else "–"
        rss = spread([r[case]["peak_rss_mb"] for r in runs], 0) if "peak_rss_mb" in runs[0][case] else "–"
        print(f"| {case} | {rate} | {step} | {rss} |")
    print("\n| ratio of samples/s (within each run) | median (min–max) |\n|---|---:|")
    for num, den in RATIOS:
        if num in cases and den in cases:
            values = [r[num]["samples_per_s"] / r[den]["samples_per_s"] for r in runs]
            print(f"| {num} / {den} | {spread(values, 2)} |")


if __name__ == "__main__":
    main()
