"""`nitro tune` end to end, through the real command: an Optuna search over MLP1's optimizer on the embedded
MNIST subset (3 epochs a trial), two trials at a time, pruned, stopped with SIGTERM and continued; and the
commands it refuses before anything is written. The SLURM case is in test_slurm.py (it needs the cluster)."""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import nitro_cmd, nitro_env

optuna = pytest.importorskip("optuna", reason="needs the tune extra (pip install -e '.[tune]')")

# The search: lr_inv and both decays (log-scale integers), dropout and batch size (configs/search/).
SEARCH = ["search=mlp1_mini", "trainer.max_epochs=3", "engine=numpy", "hydra.sweeper.n_trials=12"]
PARALLEL = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
WAIT = 240  # seconds: the bound on any command here


def _states(db: Path) -> dict[str, int]:
    """Trials by state, read straight from the study's SQLite file while the search runs."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.Error:  # not created yet
        return {}


def _load(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep / 'study.db'}")


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_a_search_prunes_survives_sigterm_and_continues_with_the_same_command(nitro, tmp_path: Path) -> None:
    sweep = tmp_path / "study"
    args = ["tune", *SEARCH, *PARALLEL, f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen([*nitro_cmd(), *args], cwd=tmp_path, env=nitro_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:  # SIGTERM once some trials ended and others run
        s = _states(sweep / "study.db")
        if s.get("COMPLETE", 0) + s.get("PRUNED", 0) >= 3 and s.get("RUNNING", 0) >= 1:
            break
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    else:
        first.kill()
        pytest.fail(f"the search did not get going: {first.communicate()}")
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err, err
    assert "2 at a time (JoblibLauncher)" in out, out
    stopped = _load(sweep)
    assert not [t for t in stopped.trials if t.state.name == "RUNNING"], "a stopped trial still runs"
    interrupted = [t for t in stopped.trials if t.state.name == "FAIL"]
    assert interrupted and all("interrupted" in t.user_attrs for t in interrupted)
    # The first batch ran two at a time, in two worker processes other than the command's.
    workers = {t.user_attrs["pid"] for t in stopped.trials if t.number in (0, 1)}
    assert len(workers) == 2 and first.pid not in workers

    # The command it printed continues the study (the same one, with the sweep folder spelled out).
    again = shlex.split(err.split("Continue with: ", 1)[1].strip())
    assert again[:2] == ["nitro", "tune"] and sorted(again[2:]) == sorted(args[1:]), again
    res = nitro(*again[1:], timeout=WAIT)
    assert res.returncode == 0, res.stdout + res.stderr
    numbers = ", ".join(str(t.number) for t in interrupted)
    plural = "s" if len(interrupted) > 1 else ""
    assert f"run again with the same parameters (interrupted): trial{plural} {numbers}" in res.stdout

    study = _load(sweep)
    by_state: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.trials:
        by_state.setdefault(t.state.name, []).append(t)
    done, pruned = by_state.get("COMPLETE", []), by_state.get("PRUNED", [])
    assert len(done) + len(pruned) == 12, {k: len(v) for k, v in by_state.items()}
    assert pruned, "no trial was pruned"
    assert set(by_state) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert f"12 trials ended: {len(done)} completed, {len(pruned)} pruned, 0 failed" in res.stdout
    # No trial counted twice: each interrupted one ran again exactly once, with its parameters; each ended
    # trial has its own run folder, which ran as far as the study says.
    for lost in by_state["FAIL"]:
        retries = [t for t in study.trials if t.user_attrs.get("retry_of") == lost.number]
        assert len(retries) == 1 and retries[0].params == lost.params
        assert retries[0].state.name in ("COMPLETE", "PRUNED")
    ended = done + pruned
    assert len({t.user_attrs["run_dir"] for t in ended}) == 12
    for t in ended:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["epochs_run"] == (3 if t.state.name == "COMPLETE" else t.last_step)
        assert t.state.name == "COMPLETE" or t.last_step < 3  # pruning after the last epoch saves nothing
        assert t.intermediate_values == {e: v for e, v in t.intermediate_values.items() if 1 <= e <= 3}

    # The outcome: the best trial's preset, its validation accuracy, its test accuracy measured once.
    best = json.loads((sweep / "best.json").read_text())
    assert best["best_trial"] == study.best_trial.number and best["val_accuracy"] == study.best_value
    assert best["trials"] == {"completed": len(done), "pruned": len(pruned), "failed": 0,
                              "interrupted": len(by_state["FAIL"])}
    assert 0 < best["test_accuracy"] <= 1 and best["test_images"] == 2000
    assert (sweep / "optimization_history.png").stat().st_size and (sweep / "param_importances.png").is_file()
    preset = nitro("train", "--config-dir", str(sweep), "experiment=best", "--cfg", "job")
    assert preset.returncode == 0, preset.stderr
    composed = yaml.safe_load(preset.stdout)
    for key, value in study.best_params.items():
        section, name = key.split(".")
        assert composed[section][name] == value, key

    # The default MLP1 hyperparameters, trained with the same budget on the same split, do no better.
    default = nitro("train", "data=mnist_mini", "model=mlp1", "trainer=default", "trainer.max_epochs=3",
                    "engine=numpy", f"hydra.run.dir={tmp_path / 'default'}")
    assert default.returncode == 0, default.stderr
    default_val = json.loads((tmp_path / "default" / "summary.json").read_text())["val_accuracy"]
    print(f"best trial {study.best_trial.number}: validation {study.best_value:.2%}, test "
          f"{best['test_accuracy']:.2%}; default config: validation {default_val:.2%}; "
          f"{len(pruned)} of 12 pruned")
    assert study.best_value >= default_val

    # The same command once more: nothing to run, the same outcome; other settings are refused.
    res = nitro(*args, timeout=WAIT)
    assert res.returncode == 0 and "12 of 12 trials ended" in res.stdout and "Launching" not in res.stdout
    assert json.loads((sweep / "best.json").read_text()) == best
    line = _one_error_line(nitro(*args[:-1], "trainer.max_epochs=2", args[-1]))
    assert "was started with config key trainer.max_epochs = 3, this command has 2" in line


def _search(config_dir: Path, space: dict) -> str:
    """A search preset in config_dir/search/ (the way a user writes their own), selected by name."""
    (config_dir / "search").mkdir(parents=True, exist_ok=True)
    (config_dir / "search" / "mine.yaml").write_text(
        "# @package _global_\n" + yaml.safe_dump({"hydra": {"sweeper": {"n_trials": 2, "space": space}}}))
    return "search=mine"


LR = {"type": "int", "low": 64, "high": 4096, "log": True}


@pytest.mark.parametrize("overrides, space, says", [
    (["trainer=paper"], None, "has no validation split (trainer.val_fraction=0, as trainer=paper)"),
    (["trainer.monitor=test"], None, "on the test set (trainer.monitor=test): nitro tune never lets the"),
    ([], {"trainer.val_fraction": {"type": "float", "low": 0.0, "high": 0.2}}, "may not vary trainer.val_"),
    ([], {"seed": {"type": "int", "low": 1, "high": 9}}, "may not vary seed"),
    ([], {"trainer": {"type": "categorical", "choices": ["default", "paper"]}}, "may not vary trainer"),
    ([], {"optimizer.lr_invv": LR}, "optimizer.lr_invv=64 cannot be composed: it is not a config key"),
    ([], {"optimizer.lr_inv": {**LR, "low": 0, "log": False}}, "optimizer.lr_inv must be in [1, "),
    ([], {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": True}}, "needs low > 0"),
    ([], {"optimizer.lr_inv": {**LR, "low": 4096}}, "low (4096) must be below high (4096)"),
    ([], {"model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}, "must be int, float or categ"),
    ([], {"trainer.batch_size": {"type": "categorical", "choices": []}}, "choices must be a non-empty list"),
    (["hydra.sweeper.pruner.name=hyperband"], {"optimizer.lr_inv": LR}, "pruner.name must be one of median"),
    (["optimizer.lr_inv=100"], {"optimizer.lr_inv": LR}, "optimizer.lr_inv is searched"),
])
def test_refused_before_anything_is_written(nitro, tmp_path: Path, overrides: list[str], space: dict | None,
                                            says: str) -> None:
    chosen = (["search=mlp1_mini"] if space is None
              else ["--config-dir", str(tmp_path), _search(tmp_path, space)])
    sweep = tmp_path / "study"
    line = _one_error_line(nitro("tune", *chosen, *overrides, f"hydra.sweep.dir={sweep}"))
    assert says in line, line
    assert not sweep.exists()


def test_help_and_usage_name_the_command(nitro) -> None:
    res = nitro("tune", "--help")
    assert res.returncode == 0 and res.stdout.startswith("nitro tune: an Optuna study"), res.stderr
    assert "search: mlp1_mini" in res.stdout and "experiment=best" in res.stdout
    assert "  tune " in nitro("--help").stdout


@pytest.mark.parametrize("value", [3, 0.25, 1e-05, True, None, "mlp2", "a b's \\ path\\", "/data/x,y",
                                   "keep ${this}", [100, 50], ["M", 64], {"factor": 3}])
def test_values_written_as_overrides_read_back_the_same(value: object) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from nitro_cli.tune.settings import render

    parsed = OverridesParser.create().parse_override(f"key={render(value)}").value()
    read = OmegaConf.to_container(OmegaConf.create({"key": parsed}), resolve=True)["key"]  # as a job sees it
    assert read == value and type(read) is type(value)


def test_the_default_study_folder_is_named_after_the_search(nitro, tmp_path: Path) -> None:
    # tune/${hydra:runtime.choices.search}: Hydra resolves its own config only inside jobs
    res = nitro("tune", "search=mlp1_mini", "trainer.max_epochs=1", "engine=numpy",
                "hydra.sweeper.n_trials=1", timeout=300)
    assert res.returncode == 0, res.stderr
    assert _states(tmp_path / "tune" / "mlp1_mini" / "study.db") == {"COMPLETE": 1}
