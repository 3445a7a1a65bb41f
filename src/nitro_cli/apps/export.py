"""`nitro export ckpt=... format=onnx|c`: integer-only inference artifacts with a model card."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from ..export import ExportResult, export_checkpoint
from ..runner import validate_export_config
from .common import plain_config, run_task


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def export(cfg: DictConfig) -> ExportResult:
    c = validate_export_config(plain_config(cfg))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    out = Path(to_absolute_path(c["out"])) if c["out"] else run_dir / c["format"]
    result = export_checkpoint(to_absolute_path(c["ckpt"]), c["format"], out, heads=c["heads"],
                               overwrite=c["overwrite"])
    card = result.card
    acc = card.get("test_accuracy")
    lines = [f"exported {card['preset']} ({card['dataset']}, epoch {card['epoch']}, test accuracy "
             f"{'unknown' if acc is None else f'{acc:.2%}'}) as {c['format']} to {result.out}"]
    lines += [f"  {name}  {_size(size)}" for name, size in result.files.items()]
    if c["format"] == "c":
        lines.append(f"build: cd {result.out} && {result.card['build']}")
    else:
        lines.append("run: onnxruntime.InferenceSession('model.onnx').run(None, {'image': images})")
    print("\n".join(lines), flush=True)  # plain lines: paths must not be wrapped
    return result


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `nitro export`."""
    run_task(lambda: export(cfg))


if __name__ == "__main__":
    main()
