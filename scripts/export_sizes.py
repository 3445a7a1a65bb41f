"""File sizes of both exports for every model preset, each export checked bit for bit on a few images.

    python scripts/export_sizes.py [--presets mlp1,vgg8b_mnist,...] [--scale 1] [--images 4] [--no-compile]

Builds each preset at its dataset's input shape with the initial weights (|W| <= 64), optionally multiplied
by --scale (e.g. 256: weights up to 16,384, the two-limb / int16 range that trained weights reach), exports
it as ONNX and C (no checkpoint needed: the plan is built from the network), runs ONNX Runtime and the
compiled C driver on --images random images, and compares every logit with nitro's own forward pass.
Prints one JSON line per preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nitro_cli.data import Normalizer
from nitro_cli.export import build_plan, render, write_folder
from nitro_cli.export import verify as V
from nitro_cli.nn import build_model

PRESETS = {  # name: (model preset, input shape)
    "mlp1": ("mlp1", (1, 28, 28)), "mlp2": ("mlp2", (1, 28, 28)), "mlp3": ("mlp3", (1, 28, 28)),
    "mlp4": ("mlp4", (3, 32, 32)), "vgg8b_mnist": ("vgg8b", (1, 28, 28)),
    "vgg8b_cifar10": ("vgg8b", (3, 32, 32)), "vgg11b_cifar10": ("vgg11b", (3, 32, 32)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true", help="skip compiling and running the C export")
    args = ap.parse_args(argv)
    ok = True
    rng = np.random.default_rng(0)
    for key in args.presets.split(","):
        preset, shape = PRESETS[key]
        model = build_model(preset, shape, 10, seed_rng=np.random.default_rng(42))
        for layer in model.layers():
            layer.weight = (layer.weight.astype(np.int64) * args.scale).astype(np.int32)
        normalizer = Normalizer(mean=np.full(shape[0], -20), mad=np.full(shape[0], 60))
        x = rng.integers(0, 256, size=(args.images, *shape), dtype=np.uint8)
        ref, _ = V.nitro_logits(model, normalizer, x)
        plan = build_plan(model, normalizer.table())
        row: dict = {"preset": key, "parameters_exported": int(sum(p.weight.size for p in plan.products())),
                     "max_abs_weight": max(p.max_abs_weight for p in plan.products()), "scale": args.scale}
        with tempfile.TemporaryDirectory(prefix="nitro_sizes.") as tmp:
            out = Path(tmp)
            for fmt in ("onnx", "c"):
                start = time.perf_counter()
                files = render(plan, fmt)
                write_folder(out / fmt, files)
                row[f"{fmt}_bytes"] = {name: len(data) for name, data in files.items()}
                row[f"{fmt}_export_s"] = round(time.perf_counter() - start, 1)
            logits = V.onnx_outputs(V.onnx_session(out / "onnx" / "model.onnx"), x)["logits"]
            row["onnx_identical"] = bool(np.array_equal(logits, ref))
            if not args.no_compile:
                start = time.perf_counter()
                V.compile_c(out / "c", out / "nitro_eval", opt="-O1")
                row["c_compile_s"] = round(time.perf_counter() - start, 1)
                if shape[0] == 1:
                    files_, fmt_ = list(V.write_idx(x, np.zeros(len(x), np.uint8), out)), "idx"
                else:
                    files_, fmt_ = [V.write_cifar(x, np.zeros(len(x), np.uint8), out / "b.bin")], "cifar"
                row["c_identical"] = bool(np.array_equal(V.run_c_driver(out / "nitro_eval", files_, fmt_)[2],
                                                         ref))
        ok &= row["onnx_identical"] and row.get("c_identical", True)
        print(json.dumps(row), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
