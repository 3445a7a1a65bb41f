"""The training and evaluation loop, checkpoints, config validation and progress display (no Hydra here)."""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import experiment_group, validate_eval_config, validate_export_config, validate_train_config
from .evaluate import EvalReport, evaluate_checkpoint, model_from_checkpoint
from .loop import (
    Summary,
    TrainingInterrupted,
    build_network,
    build_optimizer,
    check_run_dir,
    continue_command,
    finished_run,
    fit,
    resume_config,
)

__all__ = [
    "Checkpoint",
    "EvalReport",
    "Summary",
    "TrainingInterrupted",
    "build_network",
    "build_optimizer",
    "check_run_dir",
    "continue_command",
    "evaluate_checkpoint",
    "experiment_group",
    "finished_run",
    "fit",
    "load_checkpoint",
    "model_from_checkpoint",
    "resume_config",
    "save_checkpoint",
    "validate_eval_config",
    "validate_export_config",
    "validate_train_config",
]
