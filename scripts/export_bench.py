"""Deployment benchmark: images/s, identical logits, file and binary sizes of `nitro eval`, ONNX Runtime and
the compiled C driver on the same test images.

    python scripts/export_bench.py CKPT [CKPT ...] [--quickstart DIR] [--n 500] [--repeats 5] [--out DIR]

For each checkpoint (and, with --quickstart DIR, the quickstart's MLP1, trained into DIR by `nitro train`
when DIR holds no checkpoint yet): exports it as ONNX and as C (without heads, as a deployment would), runs
the first --n test images of its dataset through nitro's engine, ONNX Runtime and the C driver, counts the
images whose every logit equals nitro's, and times each path --repeats times, the paths taking turns so that
they share the machine's load (medians reported). Everything runs on one thread: nitro with
OPENBLAS_NUM_THREADS=1 (set here before NumPy loads; its int8 GEMMs then use one ONNX Runtime thread),
ONNX Runtime with intra_op_num_threads=1 and --onnx-batch images per run, the C driver as one process. The C
driver is built with `cc -std=c99 -O2` (its layers dispatch to the widest vector unit the CPU has), and for
comparison with -DNITRO_PORTABLE (the portable loops alone: SSE2 on x86-64) and with -march=native; its
time is the driver's wall time (process start and reading the test files included). CPU seconds (user +
system) are reported beside wall seconds: on a loaded machine they are the steadier measure.

Prints one JSON line per path and writes export_bench.json (every row and the machine) and export_bench.md
(tables) into --out. Exit code 1 if any path's logits differ from nitro's.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy loads: nitro's engine on one thread

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from nitro_cli import __version__  # noqa: E402
from nitro_cli.data import load_dataset  # noqa: E402
from nitro_cli.engine import cpu_flags  # noqa: E402
from nitro_cli.export import export_checkpoint, load_for_export  # noqa: E402
from nitro_cli.export import verify as V  # noqa: E402
from nitro_cli.export.card import source_commit  # noqa: E402

C_BUILDS = {"C driver (cc -O2)": [], "C driver (cc -O2 -DNITRO_PORTABLE)": ["-DNITRO_PORTABLE"],
            "C driver (cc -O2 -march=native)": ["-march=native"]}


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def c_dispatch() -> str:
    """The version of the layers the C export's dispatch picks here (its own test of the CPU, in Python)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "portable"
    flags = cpu_flags()
    if {"avx512_vnni", "avx512bw", "avx512vl"} <= flags:  # /proc/cpuinfo spelling
        return "AVX-512 VNNI"
    return "AVX2" if "avx2" in flags else "SSE2"


def _compiler() -> str:
    cc = shutil.which("cc") or "gcc"
    return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def quickstart(folder: Path) -> Path:
    """The quickstart's checkpoint (`nitro train`: MLP1 on the embedded MNIST subset), trained if missing."""
    ckpt = folder / "checkpoints" / "last.npz"
    if not ckpt.exists():
        nitro = Path(sys.executable).parent / "nitro"
        subprocess.run([str(nitro), "train", f"hydra.run.dir={folder}"], check=True,
                       stdout=subprocess.DEVNULL)
    return ckpt


class Clock:
    """Wall and CPU seconds of a call, this process's and its children's CPU time together."""

    @staticmethod
    def _cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    @classmethod
    def time(cls, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        cpu, start = cls._cpu(), time.perf_counter()
        result = fn()
        return time.perf_counter() - start, cls._cpu() - cpu, result


def bench(ckpt: Path, n: int, repeats: int, onnx_batch: int, work: Path) -> list[dict[str, Any]]:
    """Every path's row for one checkpoint."""
    state, model, normalizer = load_for_export(ckpt)
    name = state.state["config"]["data"]["name"]
    raw = load_dataset(name, state.state["config"]["data"].get("root"))
    x, y = raw.test_x[:n], raw.test_y[:n].astype(np.int64)
    n = len(y)
    work.mkdir(parents=True, exist_ok=True)
    common = {"ckpt": str(ckpt), "preset": state.state["model"]["preset"], "data": name, "n": n,
              "ckpt_bytes": ckpt.stat().st_size}

    ref = V.nitro_logits(model, normalizer, x)[0]
    exports = {fmt: export_checkpoint(ckpt, fmt, work / fmt, overwrite=True) for fmt in ("onnx", "c")}
    session = V.onnx_session(work / "onnx" / "model.onnx")
    onnx_logits = V.onnx_outputs(session, x, onnx_batch)["logits"]

    if x.shape[1] == 1:
        files, fmt = list(V.write_idx(x, y, work)), "idx"
    else:
        files, fmt = [V.write_cifar(x, y, work / "test_batch.bin")], "cifar"
    def same(logits: np.ndarray) -> int:
        return int((logits == ref).all(axis=1).sum())

    rows: dict[str, dict[str, Any]] = {
        "nitro eval (NumPy engine, 1 thread)": {"accuracy": float((ref.argmax(1) == y).mean()),
                                                "identical_logits": n, "batch": 256},
        "ONNX Runtime (CPU, 1 thread)": {"accuracy": float((onnx_logits.argmax(1) == y).mean()),
                                         "identical_logits": same(onnx_logits), "batch": onnx_batch,
                                         "model.onnx_bytes": exports["onnx"].files["model.onnx"]}}
    runs: dict[str, Callable[[], Any]] = {
        "nitro eval (NumPy engine, 1 thread)": lambda: V.nitro_logits(model, normalizer, x, 256),
        "ONNX Runtime (CPU, 1 thread)": lambda: V.onnx_outputs(session, x, onnx_batch)}
    for path, flags in C_BUILDS.items():
        exe = work / f"nitro_eval{'_'.join(flags).replace('-', '_')}"
        compile_s = Clock.time(lambda e=exe, f=flags: V.compile_c(work / "c", e, extra_flags=f))[0]
        _, preds, logits, line = V.run_c_driver(exe, files, fmt)
        layers = "portable loops" if "-DNITRO_PORTABLE" in flags else f"{c_dispatch()} (dispatch)"
        rows[path] = {"accuracy": float((preds == y).mean()), "identical_logits": same(logits),
                      "driver": line, "compile_s": round(compile_s, 2), "binary_bytes": exe.stat().st_size,
                      "flags": " ".join(["-std=c99", "-O2", *flags]), "layers": layers}
        cmd = [str(exe), fmt, *map(str, files)]
        runs[path] = lambda cmd=cmd: subprocess.run(cmd, capture_output=True, check=True)
    rows["C driver (cc -O2)"]["c_source_bytes"] = exports["c"].files
    rows["C driver (cc -O2)"]["memory"] = exports["c"].card["memory"]

    times: dict[str, list[tuple[float, float]]] = {path: [] for path in runs}
    for _ in range(repeats):
        for path, run in runs.items():
            wall, cpu, _ = Clock.time(run)
            times[path].append((wall, cpu))
    out = []
    for path, row in rows.items():
        wall = statistics.median(t[0] for t in times[path])
        cpu = statistics.median(t[1] for t in times[path])
        out.append({**common, "path": path, **row, "images_per_s": round(n / wall, 2),
                    "cpu_images_per_s": round(n / cpu, 2) if cpu > 0 else None,
                    "wall_s": [round(t[0], 4) for t in times[path]],
                    "cpu_s": [round(t[1], 4) for t in times[path]]})
    return out


def _markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = ["# Deployment benchmark (`scripts/export_bench.py`)", "", f"`{meta['command']}`", "",
             f"{meta['date']}, nitro-cli {meta['version']} at {meta['commit']}; {meta['cpu']} "
             f"({meta['cpus']} CPUs), load average {meta['load_before']} before and {meta['load_after']} "
             f"after; ONNX Runtime {meta['onnxruntime']}; {meta['cc']}; the C dispatch picks "
             f"{meta['c_dispatch']} here. Every path on one thread; medians of {meta['repeats']} interleaved "
             "runs over the same first N test images. "
             "Wall images/s is what the targets compare; CPU images/s (user + system seconds) is steadier "
             "where other processes share the cores.", ""]
    for ckpt in dict.fromkeys(r["ckpt"] for r in rows):
        group = [r for r in rows if r["ckpt"] == ckpt]
        first = group[0]
        lines += [f"## {first['preset']} on {first['data']} (`{ckpt}`, {first['ckpt_bytes']:,} bytes), "
                  f"N = {first['n']}", "",
                  "| path | accuracy | images/s (wall) | images/s (CPU) | identical logits | compile "
                  "| binary |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            compile_s = f"{r['compile_s']} s" if "compile_s" in r else ""
            binary = f"{r['binary_bytes']:,} B" if "binary_bytes" in r else ""
            lines.append(f"| {r['path']} | {100 * r['accuracy']:.2f}% | {r['images_per_s']:,} | "
                         f"{r['cpu_images_per_s']:,} | {r['identical_logits']} / {r['n']} | {compile_s} | "
                         f"{binary} |")
        c = next(r for r in group if r["path"] == "C driver (cc -O2)")
        onnx = next(r for r in group if r["path"].startswith("ONNX"))
        sizes = ", ".join(f"{name} {size:,} B" for name, size in c["c_source_bytes"].items())
        lines += ["", f"Files: model.onnx {onnx['model.onnx_bytes']:,} B; C: {sizes}. C memory: "
                  f"{c['memory']['flash_weight_bytes']:,} B of weights (flash), "
                  f"{c['memory']['ram_scratch_bytes']:,} B of scratch (RAM).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path, nargs="*")
    ap.add_argument("--quickstart", type=Path, default=None,
                    help="also the quickstart's MLP1, trained into this folder when it holds no checkpoint")
    ap.add_argument("--n", type=int, default=500, help="test images (the first n of the test split)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--onnx-batch", type=int, default=8, help="images per ONNX Runtime run")
    ap.add_argument("--out", type=Path, default=None, help="where export_bench.json/.md go (default: none)")
    ap.add_argument("--work", type=Path, default=None, help="exports and builds (default: a temp folder)")
    args = ap.parse_args(argv)
    ckpts = [*args.ckpt, *([quickstart(args.quickstart)] if args.quickstart else [])]
    if not ckpts:
        ap.error("give a checkpoint or --quickstart DIR")
    work = args.work or Path(tempfile.mkdtemp(prefix="nitro_export_bench."))
    import onnxruntime

    given = sys.argv[1:] if argv is None else argv
    meta = {"command": " ".join(["python", "scripts/export_bench.py", *given]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "version": __version__,
            "commit": source_commit(), "cpu": _lscpu_model(), "cpus": os.cpu_count(),
            "load_before": round(os.getloadavg()[0], 2), "onnxruntime": onnxruntime.__version__,
            "cc": _compiler(), "c_dispatch": c_dispatch(), "repeats": args.repeats, "n": args.n}
    rows = []
    for i, ckpt in enumerate(ckpts):
        for row in bench(ckpt, args.n, args.repeats, args.onnx_batch, work / str(i)):
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("wall_s", "cpu_s")}), flush=True)
    meta["load_after"] = round(os.getloadavg()[0], 2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        saved = {"machine": meta, "rows": rows}
        (args.out / "export_bench.json").write_text(json.dumps(saved, indent=2) + "\n")
        (args.out / "export_bench.md").write_text(_markdown(meta, rows) + "\n")
    return 0 if all(r["identical_logits"] == r["n"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
