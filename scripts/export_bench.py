"""Accuracy and images/s of `nitro eval`, ONNX Runtime and the compiled C driver on the same test images.

    python scripts/export_bench.py CKPT [--n 2000] [--repeats 3] [--out DIR]

Exports the checkpoint in both formats (into --out, default a temp folder), checks that every logit of
ONNX Runtime and of the C program equals nitro's, and times each path on the first --n test images of the
checkpoint's dataset, --repeats times (the median is reported). Everything runs on one thread: nitro with
OPENBLAS_NUM_THREADS=1 (set it before starting), ONNX Runtime with intra_op_num_threads=1, the C driver
compiled with `cc -std=c99 -O2`. The C timing is the driver's wall time (process start and file reading
included). Prints one JSON line per path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nitro_cli.data import load_dataset
from nitro_cli.export import export_checkpoint, load_for_export
from nitro_cli.export import verify as V


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--n", type=int, default=2000, help="test images (the first n of the test split)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None, help="export folder (default: a temp folder)")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="nitro_export_bench."))
    ckpt, model, normalizer = load_for_export(args.ckpt)
    name = ckpt.state["config"]["data"]["name"]
    raw = load_dataset(name, ckpt.state["config"]["data"].get("root"))
    x, y = raw.test_x[:args.n], raw.test_y[:args.n].astype(np.int64)
    n = len(y)
    common = {"ckpt": str(args.ckpt), "preset": ckpt.state["model"]["preset"], "data": name, "n": n,
              "repeats": args.repeats}

    seconds, (ref, _) = timed(lambda: V.nitro_logits(model, normalizer, x, args.batch_size), args.repeats)
    rows = [{"path": "nitro eval (NumPy engine)", "accuracy": float((ref.argmax(1) == y).mean()),
             "images_per_s": n / seconds, "identical_logits": n}]

    sizes = {}
    for fmt in ("onnx", "c"):
        sizes[fmt] = export_checkpoint(args.ckpt, fmt, out / fmt, overwrite=True).files
    session = V.onnx_session(out / "onnx" / "model.onnx")
    seconds, outputs = timed(lambda: V.onnx_outputs(session, x, args.batch_size), args.repeats)
    logits = outputs["logits"]  # type: ignore[index]
    rows.append({"path": "ONNX Runtime (CPU, 1 thread)", "accuracy": float((logits.argmax(1) == y).mean()),
                 "images_per_s": n / seconds,
                 "identical_logits": int((logits == ref).all(axis=1).sum())})

    exe = out / "c" / "nitro_eval"
    start = time.perf_counter()
    V.compile_c(out / "c", exe)
    compile_s = time.perf_counter() - start
    if raw.test_x.shape[1] == 1:
        files, fmt = list(V.write_idx(x, y, out)), "idx"
    else:
        files, fmt = [V.write_cifar(x, y, out / "test_batch.bin")], "cifar"
    c_logits = V.run_c_driver(exe, files, fmt)[2]
    cmd = [str(exe), fmt, *map(str, files)]
    seconds, res = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, check=True),
                         args.repeats)
    line = res.stdout.strip().splitlines()[-1]  # type: ignore[union-attr]
    correct = int(line.split()[1].split("/")[0])
    rows.append({"path": "C driver (cc -O2, 1 thread)", "accuracy": correct / n, "images_per_s": n / seconds,
                 "identical_logits": int((c_logits == ref).all(axis=1).sum()), "driver": line,
                 "compile_s": round(compile_s, 1)})
    for row in rows:
        print(json.dumps({**common, **row, "images_per_s": round(row["images_per_s"], 1)}), flush=True)
    print(json.dumps({**common, "sizes": sizes, "out": str(out)}), flush=True)
    return 0 if all(r["identical_logits"] == n for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
