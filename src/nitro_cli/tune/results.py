"""The end of a search: the best trial as a ready experiment preset, its test accuracy measured once, the
trial counts, and Optuna's optimization-history and parameter-importance plots, all in the sweep folder."""

from __future__ import annotations

import json
import shlex
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import NitroError
from ..runner import evaluate_checkpoint
from ..runner.checkpoint import atomic_write_text
from .settings import Settings
from .study import BEST_EPOCH, RUN_DIR, census, ended, optuna_module, study_name

if TYPE_CHECKING:
    import optuna

# The preset is written as <sweep>/experiment/best.yaml: `--config-dir <sweep>` puts it in the `experiment`
# group. Keys left out: where and how visibly a run computes, which the user's own defaults should decide.
EXPERIMENT_NAME = "best"
NOT_PINNED = ("resume", "engine", "logger", "data.root", "trainer.progress")
GROUPS = ("data", "model", "optimizer", "trainer", "compat")


def conclude(study: optuna.Study, settings: Settings, sweep_dir: Path,
             base: Mapping[str, Any]) -> dict[str, Any]:
    """Print and write the outcome of the study (best.json, experiment/best.yaml, two plots); a study with
    no completed trial is a NitroError saying what became of its trials."""
    counts = census(study)
    tally = (f"{ended(counts)} trials ended: {counts['completed']} completed, {counts['pruned']} pruned, "
             f"{counts['failed']} failed")
    if counts["interrupted"]:
        tally += f" (and {counts['interrupted']} interrupted, each run again)"
    print(f"study {study_name(settings, sweep_dir)}: {tally}", flush=True)
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not completed:
        raise NitroError(f"no trial of the study in {sweep_dir} completed ({tally}); see the trials' errors "
                         "above or in their summary.json, and widen or move the search space")
    best = study.best_trial
    run_dir = Path(best.user_attrs[RUN_DIR])
    ckpt = run_dir / "checkpoints" / "best.npz"
    test = _test_accuracy(sweep_dir / "best.json", best.number, ckpt, base)
    preset = _write_preset(sweep_dir, run_dir, best, test)
    plots = _plots(study, sweep_dir)
    outcome = {
        "study": study_name(settings, sweep_dir), "storage": settings.storage_url(sweep_dir),
        "best_trial": best.number, "params": best.params, "val_accuracy": best.value,
        "best_epoch": best.user_attrs.get(BEST_EPOCH), "test_accuracy": test["accuracy"],
        "test_images": test["images"], "run_dir": str(run_dir), "checkpoint": str(ckpt),
        "experiment": str(preset), "plots": [str(p) for p in plots],
        "trials": {k: counts[k] for k in ("completed", "pruned", "failed", "interrupted")},
    }
    try:
        atomic_write_text(sweep_dir / "best.json", json.dumps(outcome, indent=2) + "\n")
    except OSError as exc:
        raise NitroError(f"cannot write {sweep_dir / 'best.json'}: {exc.strerror or exc}") from None
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    print(f"best: trial {best.number}, validation accuracy {best.value:.2%} (epoch "
          f"{outcome['best_epoch']}): {params}", flush=True)
    print(f"test accuracy of its best.npz: {test['accuracy']:.2%} on {test['images']} test images, measured "
          "once, after the search (never seen by it)", flush=True)
    print(f"wrote {preset}: train it with `{train_command(sweep_dir)}`", flush=True)
    print(f"wrote {sweep_dir / 'best.json'}" + "".join(f", {p}" for p in plots), flush=True)
    return outcome


def _test_accuracy(record: Path, number: int, ckpt: Path, base: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial's test accuracy: evaluated once, then read back from best.json while that trial is
    still the best (the same command run again after the study ended evaluates nothing)."""
    try:
        old = json.loads(record.read_text())
        if old["best_trial"] == number and old["checkpoint"] == str(ckpt):
            return {"accuracy": old["test_accuracy"], "images": old["test_images"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not ckpt.is_file():
        raise NitroError(f"the best trial's checkpoint {ckpt} is gone; its test accuracy cannot be measured")
    report = evaluate_checkpoint(ckpt, data={"name": base["data"]["name"], "root": base["data"]["root"]},
                                 backend=base["engine"]["backend"],
                                 batch_size=base["trainer"]["eval_batch_size"])
    return {"accuracy": report.test_accuracy, "images": report.n}


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        cfg = cfg.get(part) or {}
    cfg.pop(last, None)


def train_command(sweep_dir: Path) -> str:
    """How to train the best trial's config: its preset, found in the sweep folder."""
    return shlex.join(["nitro", "train", "--config-dir", str(sweep_dir), f"experiment={EXPERIMENT_NAME}"])


def _write_preset(sweep_dir: Path, run_dir: Path, best: optuna.trial.FrozenTrial,
                  test: dict[str, Any]) -> Path:
    """The best trial's full config (what its run trained with) as an experiment preset."""
    try:
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        hydra_yaml = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())
        choices = hydra_yaml["hydra"]["runtime"]["choices"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise NitroError(f"cannot read the best trial's config in {run_dir}/.hydra: {exc}") from None
    for key in NOT_PINNED:
        _drop(config, key)
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    header = (
        "# @package _global_\n"
        f"# The best trial ({best.number}) of the nitro tune study in {sweep_dir}:\n"
        f"# validation accuracy {best.value:.2%} (epoch {best.user_attrs.get(BEST_EPOCH)}, on trainer="
        f"{config['trainer']['name']}'s held-out split); test accuracy {test['accuracy']:.2%} on "
        f"{test['images']} images, measured once after the search.\n# Searched: {params}\n"
        "# trainer.max_epochs is the search's budget per trial: raise it for a longer final run.\n"
        f"# Train it: {train_command(sweep_dir)} [other overrides], or copy this file into your\n"
        "# own configs/experiment/ folder. Every key is pinned but the engine, the logger and the data\n"
        "# root.\n")
    defaults = [{f"override /{g}": choices[g]} for g in GROUPS if choices.get(g)]
    body = yaml.safe_dump({"defaults": defaults, **config}, sort_keys=False, default_flow_style=False)
    path = sweep_dir / "experiment" / f"{EXPERIMENT_NAME}.yaml"
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, header + body)
    except OSError as exc:
        raise NitroError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _plots(study: optuna.Study, sweep_dir: Path) -> list[Path]:
    """optimization_history.png and param_importances.png (PED-ANOVA importances: no scikit-learn needed);
    a plot that cannot be drawn yet (too few completed trials) is left out with a note."""
    optuna = optuna_module()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # so marked in Optuna 4.0
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    out = []
    for name, draw in (("optimization_history", lambda: vis.plot_optimization_history(study)),
                       ("param_importances", lambda: vis.plot_param_importances(study, evaluator=evaluator))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # e.g. too few trials for importances
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = draw()
            path = sweep_dir / f"{name}.png"
            ax.figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
            out.append(path)
        except (ValueError, RuntimeError, ZeroDivisionError, UserWarning, OSError) as exc:
            print(f"note: no {name} plot: {exc}", flush=True)
            continue
        if name == "param_importances":
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
            print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()), flush=True)
    return out
