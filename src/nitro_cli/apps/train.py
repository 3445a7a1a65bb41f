"""`nitro train`: compose a run with Hydra, validate it, and hand it to the runner."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from ..errors import NitroError
from ..runner import TrainingInterrupted, fit, load_checkpoint, resume_config, validate_train_config
from ..runner.checkpoint import atomic_write_text
from .common import explicit_keys, plain_config, run_task


def train(cfg: DictConfig) -> dict:
    """Validate before any work, resolve a resume, then train into Hydra's run dir."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    composed = plain_config(cfg)
    validate_train_config(composed)
    ckpt = None
    if composed.get("resume"):
        ckpt = load_checkpoint(to_absolute_path(str(composed["resume"])))
        composed = resume_config(ckpt, composed, explicit_keys())
        validate_train_config(composed)
        # .hydra/config.yaml describes what this run really is: the checkpoint's config.
        hydra_cfg = run_dir / HydraConfig.get().output_subdir / "config.yaml" \
            if HydraConfig.get().output_subdir else None
        if hydra_cfg is not None and hydra_cfg.parent.is_dir():
            atomic_write_text(hydra_cfg, yaml.safe_dump(composed, sort_keys=False))
    try:
        return fit(composed, run_dir, resume=ckpt)
    except TrainingInterrupted as exc:
        print(f"interrupted: stopped {exc.where} and saved {exc.checkpoint}; continue with "
              f"nitro train resume={exc.checkpoint}", file=sys.stderr, flush=True)
        raise SystemExit(128 + exc.signum) from None
    except OSError as exc:  # outputs that are not checkpoints: metrics.csv, summary.json, train.log
        raise NitroError(f"cannot write the run's outputs in {run_dir}: {exc.strerror or exc}") from exc


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `nitro train`."""
    run_task(lambda: train(cfg))


if __name__ == "__main__":
    main()
