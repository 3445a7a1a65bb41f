"""The manual stays true: every `nitro ...` line shown in README.md and docs/ runs, the config reference is
the one the configs generate, and the site builds with --strict.

Each command line of a fenced code block is run in a form that cannot train long:

- `nitro train` alone (the quickstart) trains one epoch (`trainer.max_epochs=1`); that run is also the tiny
  run whose folders stand for the placeholders below.
- other `nitro train` lines: the command itself with `--cfg job` appended (`-m` dropped and each swept key
  at its first value, as Hydra refuses `-m` with `--cfg`), which composes the config exactly as the real
  command would; then every job of the sweep is composed in-process and validated as `nitro train` validates
  a run before it starts. A renamed key, group, preset or value range fails here.
- `nitro train resume=<...>` lines continue a copy of the finished tiny run for real (`trainer.max_epochs=1`,
  so nothing is left to train): the checkpoint loads and the overrides are accepted as a resume.
- `nitro eval`, `nitro export`, `nitro report`, `nitro data list` and `--help`/`--cfg` lines run for real,
  in a fresh folder (where `results` links to the repository's, read only).
- `nitro data fetch NAME` would download: it runs as `nitro data fetch --help`, and NAME must be a dataset.
- `nitro tune` lines run for real on this machine with one trial of one epoch (`hydra.sweeper.n_trials=1
  trainer.max_epochs=1`), so the search, its settings and its whole check are exercised; a line that
  submits to SLURM is composed with `--cfg job` instead.

Placeholders (a value holding `<...>`) stand for the tiny run's folders: `ckpt=` its checkpoint of the same
name, `resume=`/`hydra.run.dir=` a copy of it, `runs=` the folder holding it, `hydra.sweep.dir=`/`out=` a
fresh folder. An absolute `out=` goes to a fresh folder too. Any other placeholder fails the test, and so
does a command that cannot be checked unless UNCHECKED names it with the reason.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import nitro_cmd, nitro_env

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 170

# Command lines that no form of this test can check, each with the reason. Keep it short.
UNCHECKED = {
    "nitro train --config-dir my-configs hydra/launcher=my_cluster --cfg hydra":
        "needs the reader's own launcher preset (my-configs/hydra/launcher/my_cluster.yaml, shown above it)",
    "nitro train --config-dir tune/mlp1_mini experiment=best trainer.max_epochs=30":
        "needs the folder a finished search writes; tests/test_tune.py composes a search's experiment=best",
}

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})")
COMMAND = re.compile(r"^\s*(?:\$\s+)?(?P<cmd>nitro(?:\s.*)?)$")
PLACEHOLDER = re.compile(r"<[^<>]+>")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@dataclass
class DocCommand:
    text: str  # the command line as shown (continuations joined, comments dropped)
    where: list[str] = field(default_factory=list)  # file:line of every place that shows it

    @property
    def args(self) -> list[str]:
        return shlex.split(self.text)[1:]


def code_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line inside a fenced code block, continuations joined."""
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group("fence")
            continue
        if m and m.group("fence").startswith(fence) and not line.strip()[len(m.group("fence")):].strip():
            fence = None
            continue
        if pending:
            pending += " " + line.strip()
        else:
            pending, start = line, number
        if pending.rstrip().endswith("\\"):
            pending = pending.rstrip()[:-1]
            continue
        yield start, pending
        pending = ""


def doc_commands() -> list[DocCommand]:
    found: dict[str, DocCommand] = {}
    for path in doc_files():
        for number, line in code_lines(path.read_text(encoding="utf-8")):
            m = COMMAND.match(line)
            if m is None:
                continue
            words = shlex.split(m.group("cmd"), comments=True)
            text = shlex.join(words)
            found.setdefault(text, DocCommand(text)).where.append(f"{path.relative_to(ROOT)}:{number}")
    return list(found.values())


COMMANDS = doc_commands()


def test_the_manual_shows_commands_and_unchecked_ones_are_few_and_still_shown() -> None:
    assert len(COMMANDS) >= 20, [c.text for c in COMMANDS]
    assert len(UNCHECKED) <= 3
    shown = {c.text for c in COMMANDS}
    for text in UNCHECKED:
        assert text in shown, f"UNCHECKED names a command no page shows any more: {text}"


def test_readme_stays_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines; move detail into docs/ "
                                       f"(limit {README_MAX_LINES})")


# --- the tiny run: the quickstart, one epoch -------------------------------------------------------------

@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`nitro train` as the quickstart shows it, for one epoch; its folder stands for the placeholders."""
    run_dir = tmp_path_factory.mktemp("docs") / "quickstart"
    res = subprocess.run([*nitro_cmd(), "train", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
                         capture_output=True, text=True, env=nitro_env(), timeout=300, cwd=run_dir.parent)
    assert res.returncode == 0, res.stderr
    return run_dir


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh folder to run a command in, where `results` is the repository's (read only)."""
    (tmp_path / "results").symlink_to(ROOT / "results", target_is_directory=True)
    return tmp_path


def _substitute(args: list[str], run: Path, work: Path) -> list[str]:
    """Each placeholder value replaced by the tiny run's folder it stands for (see the module docstring)."""
    copy = work / "run-copy"
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and PLACEHOLDER.search(value):
            if key == "ckpt":
                value = str(run / "checkpoints" / Path(value).name)
            elif key == "resume":
                if not copy.exists():
                    shutil.copytree(run, copy)
                value = str(copy / "checkpoints" / Path(value).name)
            elif key == "hydra.run.dir":
                if not copy.exists():
                    shutil.copytree(run, copy)
                value = str(copy)
            elif key == "runs":
                value = str(run.parent)
            elif key in ("hydra.sweep.dir", "out"):
                value = str(work / f"placeholder-{key}")
            else:
                pytest.fail(f"no stand-in for the placeholder in {arg!r}: add one to tests/test_docs.py")
        elif eq and key == "out" and Path(value).is_absolute():
            value = str(work / "out-absolute")
        elif PLACEHOLDER.search(arg):
            pytest.fail(f"no stand-in for the placeholder {arg!r}: write the command in full")
        out.append(f"{key}={value}" if eq else arg)
    return out


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*nitro_cmd(), *args], capture_output=True, text=True, env=nitro_env(),
                          timeout=timeout, cwd=cwd)


def _accepted(res: subprocess.CompletedProcess[str], command: DocCommand) -> None:
    assert res.returncode == 0, (f"`{command.text}` ({', '.join(command.where)}) was refused "
                                 f"(exit {res.returncode}):\n{res.stderr[-3000:]}")


# --- nitro train: compose every job, validate it as a run would be -----------------------------------------

def _jobs(overrides: list[str]) -> list[list[str]]:
    """Every job of a sweep as its list of overrides (one job when nothing is swept)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    choices = []
    for item in overrides:
        parsed = parser.parse_overrides([item])[0]
        if parsed.is_sweep_override():
            key = item.split("=", 1)[0]
            choices.append([f"{key}={v}" for v in parsed.sweep_string_iterator()])
        else:
            choices.append([item])
    return [list(job) for job in itertools.product(*choices)]


def _validate_jobs(overrides: list[str], command: DocCommand) -> int:
    """Compose each job in-process, as the real command would, and validate its config as `nitro train`
    does before it starts a run. Returns the number of jobs."""
    from hydra import compose, initialize_config_module

    from nitro_cli.apps.common import plain_config, task_config
    from nitro_cli.errors import NitroError
    from nitro_cli.runner import validate_train_config

    jobs = _jobs(overrides)
    assert len(jobs) <= 64, f"`{command.text}` sweeps {len(jobs)} jobs; show a smaller sweep"
    for job in jobs:
        with initialize_config_module("nitro_cli.configs", version_base="1.3"):
            cfg = compose("train", overrides=job, return_hydra_config=True)
        try:
            validate_train_config(plain_config(task_config(cfg)))
        except NitroError as exc:
            pytest.fail(f"`{command.text}` ({', '.join(command.where)}): job {' '.join(job)} is refused: "
                        f"{exc}")
    return len(jobs)


def _compose_train(command: DocCommand, run: Path, work: Path) -> None:
    args = [a for a in _substitute(command.args[1:], run, work) if a not in ("-m", "--multirun")]
    first = _jobs(args)[0] if args else []
    res = _run(["train", *first, "--cfg", "job"], work, timeout=120)
    _accepted(res, command)
    composed = yaml.safe_load(res.stdout)
    assert isinstance(composed, dict) and "trainer" in composed, res.stdout[:500]
    _validate_jobs(args, command)
    left = sorted(p.name for p in work.iterdir() if p.name not in ("results", "run-copy"))
    assert not left, f"`--cfg job` wrote {left} in its folder"


def _set_epochs(args: list[str], epochs: int) -> list[str]:
    return [a for a in args if not a.startswith("trainer.max_epochs=")] + [f"trainer.max_epochs={epochs}"]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where[0] for c in COMMANDS])
def test_documented_command_is_accepted(command: DocCommand, quickstart_run: Path, workdir: Path) -> None:
    """The command shown at `command.where` runs (or composes) without being refused."""
    if command.text in UNCHECKED:
        pytest.skip(f"cannot be checked: {UNCHECKED[command.text]}")
    args = command.args
    sub = args[0] if args else "--help"
    if sub in ("-h", "--help", "help", "-V", "--version") or "--help" in args or "--cfg" in args:
        _accepted(_run(_substitute(args, quickstart_run, workdir), workdir), command)
    elif sub == "train" and args == ["train"]:
        assert (quickstart_run / "checkpoints" / "best.npz").is_file()  # the session's quickstart run
        assert (quickstart_run / "metrics.csv").read_text().count("\n") == 2  # header and one epoch
    elif sub == "train" and any(a.startswith("resume=") and PLACEHOLDER.search(a) for a in args):
        res = _run(["train", *_set_epochs(_substitute(args[1:], quickstart_run, workdir), 1)], workdir)
        _accepted(res, command)
    elif sub == "train":
        _compose_train(command, quickstart_run, workdir)
    elif sub in ("eval", "export", "report"):
        _accepted(_run([sub, *_substitute(args[1:], quickstart_run, workdir)], workdir), command)
    elif sub == "data" and args[1:2] == ["list"]:
        _accepted(_run(args, workdir, timeout=120), command)
    elif sub == "data" and args[1:2] == ["fetch"]:
        from nitro_cli.data import DATASETS

        names = [a for a in args[2:] if not a.startswith("-")]
        assert names and all(n in DATASETS for n in names), f"`{command.text}`: unknown dataset {names}"
        _accepted(_run(["data", "fetch", "--help"], workdir), command)
    elif sub == "tune" and any("slurm" in a for a in args):
        _accepted(_run([*_substitute(args, quickstart_run, workdir), "--cfg", "job"], workdir), command)
    elif sub == "tune":
        one = [a for a in _substitute(args[1:], quickstart_run, workdir)
               if not a.startswith(("hydra.sweeper.n_trials=", "trainer.max_epochs="))]
        res = _run(["tune", *one, "hydra.sweeper.n_trials=1", "trainer.max_epochs=1"], workdir)
        _accepted(res, command)
    else:
        pytest.fail(f"`{command.text}` ({', '.join(command.where)}): no way to check this command; teach "
                    "tests/test_docs.py one, or list it in UNCHECKED with the reason")


# --- the config reference and the site ----------------------------------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "scripts" /
                                                  "gen_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_generated_from_the_configs() -> None:
    gen = _generator()
    fresh = gen.Reference().render()
    committed = (DOCS / "reference" / "configs.md").read_text(encoding="utf-8")
    assert committed == fresh, ("docs/reference/configs.md is stale: run `.venv/bin/python "
                                "scripts/gen_config_reference.py` and commit it")


def test_every_config_key_has_a_meaning() -> None:
    ref = _generator().Reference()
    ref.render()
    assert not ref.missing, ("these keys have no comment above them in their YAML file (their meaning in the "
                             f"config reference): {', '.join(ref.missing)}")


def test_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs build --strict: no broken link or anchor, no page left out of the nav."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (make install does)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site"), "--config-file", str(ROOT / "mkdocs.yml")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
