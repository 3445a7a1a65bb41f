"""The `nitro` command: dispatches `train | tune | eval | export | report | data` to thin apps.

train, tune, eval, export and report are Hydra apps: the subcommand is dropped from sys.argv and the
app's Hydra main is called, so Hydra's own flags keep working (`--help`, `--cfg job`, `-m`, overrides,
`hydra/launcher=...`).
Every problem a user can cause ends as one `error:` paragraph on stderr and exit code 2, never a traceback.
Set HYDRA_FULL_ERROR=1 to see the full traceback instead.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from . import __version__
from .errors import NitroError, os_error_text, shortened

USAGE = f"""\
nitro {__version__}: integer-only NITRO-D training, evaluation and reports.

usage: nitro <command> [overrides ...]

commands:
  train    train a model (Hydra app)      nitro train model=mlp2 data=fashion_mnist trainer.max_epochs=5
                                          nitro train experiment=paper/mlp1_mnist
                                          nitro train -m experiment=paper/mlp1_mnist seed='range(42,52)'
                                          nitro train resume=outputs/DATE/TIME/checkpoints/last.npz
  tune     Optuna search (Hydra app)      nitro tune search=mlp1_mini [hydra/launcher=joblib]
  eval     evaluate a checkpoint          nitro eval ckpt=outputs/DATE/TIME/checkpoints/best.npz [data=mnist]
  export   integer-only ONNX or C99       nitro export ckpt=outputs/DATE/TIME/checkpoints/best.npz format=c
                                          nitro export ckpt=... format=onnx out=exports/mlp1 [heads=true]
  report   mean ± std over seeds          nitro report runs=multirun/DATE/TIME
  data     list / fetch datasets          nitro data list | nitro data fetch cifar10

`nitro <command> --help` shows a command's options; `nitro train --cfg job` prints the composed config.
"""
COMMANDS = ("train", "tune", "eval", "export", "report", "data")


def _fail(message: str, code: int = 2) -> int:
    text = " ".join(message.split())
    print(text if text.startswith("error:") else f"error: {text}", file=sys.stderr, flush=True)
    return code


def _group_options(group: str) -> list[str]:
    """Preset names of a config group shipped in nitro_cli/configs (nested ones as `paper/row`)."""
    root = resources.files("nitro_cli.configs").joinpath(*group.split("/"))
    found: list[str] = []

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir() and not child.name.startswith("__"):
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                found.append(prefix + child.name[: -len(".yaml")])

    if root.is_dir():
        walk(root, "")
    return found


def _unknown_preset(path: str, command: str, options: list[str] | None = None) -> str:
    """The message for `group=name` where `path` ("data/mnsit", "experiment/paper/row") is no preset."""
    group, _, name = path.rpartition("/")
    if not group.startswith("hydra/") and "/" in group:  # nested presets: experiment=paper/row
        group, _, sub = group.partition("/")
        name = f"{sub}/{name}"
    options = options or _group_options(group)
    if options:
        return (f"unknown {group} preset '{shortened(name)}'; choose one of: {', '.join(options)} "
                f"(e.g. nitro {command} {group}={options[0]})")
    return f"unknown {group} preset '{shortened(name)}'; see `nitro {command} --help` for the config groups"


def os_error_message(exc: OSError, command: str) -> str:
    """One paragraph for an OSError raised before the task runs, about a path the command names: Hydra
    looking for a preset file (`data=<a 300-character name>`), or the checks looking at hydra.run.dir,
    resume or a data root. Not an "invalid override" with a hint about config groups: the override is
    well formed, the path is what the system refuses."""
    configs = Path(str(resources.files("nitro_cli.configs")))
    name = Path(os.fsdecode(exc.filename)) if exc.filename is not None else None
    if name is not None and name.suffix == ".yaml" and name.is_relative_to(configs):
        return _unknown_preset(name.relative_to(configs).with_suffix("").as_posix(), command)
    return os_error_text(exc)


def hydra_error_message(exc: BaseException, command: str) -> str:
    """One paragraph for a Hydra/OmegaConf error: what is wrong and how to fix it."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    text = str(exc)
    m = re.search(r"Multiple values for (\S+?)\. To override a value use 'override \S+: (\S+)'", text)
    if m:  # `+group=preset` for a group the defaults list already selects
        key, value = m.groups()
        return (f"{key} is already in the defaults list: write {key}={value}, without the + (which adds a "
                "key that does not exist yet)")
    if isinstance(exc, MissingConfigException):
        m = re.search(r"Could not find '([^']+)'", text)
        if m:
            return _unknown_preset(m.group(1), command, list(exc.options or []))
    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the overrides: {text.splitlines()[0]}. Write them as key=value (lists as "
                "key=[1,2], quote strings with spaces); see https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(exc, ConfigCompositionException):
        m = re.search(r"Could not override '([^']+)'", text)
        cause = str(exc.__cause__ or "")
        if m and "not in struct" in cause:
            return (f"unknown config key {m.group(1)!r}; check its spelling (`nitro {command} --cfg job` "
                    "prints every key and its value)")
        if m:
            return f"cannot override {m.group(1)!r}: {cause.splitlines()[0] if cause else text}"
    lines = []
    for line in text.splitlines():
        if line.startswith("Config search path") or line.strip().startswith(("full_key:", "object_type=")):
            break
        lines.append(line.strip())
    return " ".join(x for x in lines if x) or exc.__class__.__name__


def launcher_error_message(exc: BaseException) -> str:
    """One paragraph for a job that a submitit launcher could not bring to an end (killed, timed out,
    crashed outside our task): what happened, and where its logs and the sweep's outputs are."""
    text = str(exc)
    if "\n---" in text and "failed during processing" in text:  # FailedJobError: trace between rulers
        trace = [line for line in text.split("\n---", 2)[1].splitlines() if line.strip("- ")]
        what = f"a job of the sweep failed: {trace[-1].strip() if trace else exc.__class__.__name__}"
    else:  # UncompletedJobError: no result (timeout, out of memory, killed, cancelled)
        head = " ".join(text.split("\n-", 1)[0].split())
        head = re.sub(r"\s*(No error stream|Error stream produced|No output/error stream).*", "", head)
        what = f"a job of the sweep did not complete: {head}"
    logs = sorted(set(re.findall(r"(\S+_log\.(?:err|out))", text)))
    sweep = re.search(r"(\S+?)/\.submitit/", text)
    where = f"; its logs: {', '.join(logs)}" if logs else ""
    rest = (f"; `nitro report runs={sweep.group(1)}` shows how the other jobs ended" if sweep else "")
    return f"{what}{where}{rest}"


def _raised_in_launcher(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc` is in a launcher plugin (submitit, joblib), not in our task."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return not getattr(exc, "nitro_in_task", False) and any(
        part in name.replace("\\", "/") for part in ("/submitit/", "/hydra_plugins/", "/joblib/"))


def user_error_message(exc: BaseException, command: str) -> str | None:
    """The one-paragraph message for an error the user caused, or None for a bug (shown with traceback).

    Anything raised while Hydra parses overrides and composes the config (before our task runs) comes from
    the command line, whatever its type (Hydra raises e.g. a bare ValueError for `model=0`).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .apps.common import JobFailed, sweep_failure_message

    if isinstance(exc, JobFailed):
        return sweep_failure_message(exc)
    if isinstance(exc, NitroError):
        return str(exc)
    if type(exc).__module__.startswith("submitit."):  # a launcher's job that ended without a result
        return launcher_error_message(exc)
    if _raised_in_launcher(exc):
        return (f"the sweep's launcher could not run it: {' '.join(str(exc).split())} (hydra/launcher="
                "submitit_slurm and slurm_cluster submit with sbatch from a SLURM login node; "
                "submitit_local and joblib run on this machine)")
    if isinstance(exc, HydraException | OmegaConfBaseException):
        return hydra_error_message(exc, command)
    if isinstance(exc, OSError) and not getattr(exc, "nitro_in_task", False):
        return os_error_message(exc, command)
    if isinstance(exc, Exception) and not getattr(exc, "nitro_in_task", False):
        return (f"invalid override: {hydra_error_message(exc, command)} (`nitro {command} --help` lists the "
                "config groups and their presets)")
    return None


class _SacctNote(logging.Filter):
    """submitit asks sacct for its SLURM jobs' states and warns at every poll when sacct fails, as it does on
    a cluster without accounting storage. The jobs' result files still tell when each one ends, so the
    warnings are dropped and the first one becomes a note. sacct's own reason, which it prints on stderr at
    every poll, is kept out of the terminal by _quiet_sacct_polls (`quiet`: the note says how to see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.noted = False
        self.quiet = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not self.noted:
            self.noted = True
            why = ("run `sacct` to see its reason" if self.quiet
                   else "sacct's own one-line reason may repeat at each check")
            print("note: sacct cannot report the jobs' states here (no accounting storage?); nitro follows "
                  "each job through the result file it writes under the sweep's .submitit folder, and squeue "
                  f"shows them. {why}", file=sys.stderr, flush=True)
        return False


_SACCT_NOTE = _SacctNote()

# Runs the command with its stderr dropped: sh -c '...' sacct -o ... (the command's words stay arguments).
SACCT_WITHOUT_STDERR = ["sh", "-c", 'exec "$0" "$@" 2>/dev/null']


def _quiet_sacct_polls() -> Callable[[], None]:
    """Keep sacct's stderr out of the terminal while submitit polls it for a SLURM sweep's job states;
    returns the function that puts submitit back as it was.

    submitit's InfoWatcher.update runs `subprocess.check_output(self._make_command())`, which captures
    sacct's stdout and lets its stderr through to ours; without accounting storage sacct fails at each poll
    (0, 2, 4, 8, ... s after a submission, then every 10 min) and prints "Slurm accounting storage is
    disabled" each time. Here the one watcher that every SlurmJob shares (the class attribute
    SlurmJob.watcher) is replaced by one whose sacct command drops its stderr, and nothing else. That is
    safe: submitit reads only sacct's stdout and exit status, which are unchanged, and treats any failure as
    "bypass, status may be inaccurate", which _SacctNote already turns into its one note; so nothing a user
    needs is lost. sbatch, scancel and the jobs' own logs are untouched. With a submitit whose classes are
    not as expected (another version), nothing is changed and the note says that sacct's line may repeat.
    """
    try:
        from submitit.slurm import slurm
    except Exception:  # no cluster extra (so no SLURM sweep either), or one that cannot load
        return lambda: None
    base, shared = getattr(slurm, "SlurmInfoWatcher", None), getattr(slurm, "SlurmJob", None)
    original = getattr(shared, "watcher", None)
    if not (isinstance(base, type) and type(original) is base
            and callable(getattr(base, "_make_command", None))):
        return lambda: None

    class QuietSacctWatcher(base):  # type: ignore[misc, valid-type]
        def _make_command(self) -> list[str] | None:
            command = super()._make_command()
            return None if command is None else [*SACCT_WITHOUT_STDERR, *command]

    try:
        quiet = QuietSacctWatcher(delay_s=getattr(original, "_delay_s", 600))
    except Exception:  # a constructor of another version
        return lambda: None
    shared.watcher = quiet
    _SACCT_NOTE.quiet = True

    def restore() -> None:
        if shared.watcher is quiet:
            shared.watcher = original
        _SACCT_NOTE.quiet = False

    return restore


def _run_hydra_app(command: str, main: Callable[[], None], args: list[str]) -> int:
    from .apps.common import Refused

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    _SACCT_NOTE.noted = False  # once per command
    logging.getLogger("submitit").addFilter(_SACCT_NOTE)
    unquiet_sacct = _quiet_sacct_polls()
    # Let Hydra's errors reach us as exceptions (it would otherwise print its own report and exit 1).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = ["nitro" if args[:1] in (["-sc"], ["--shell-completion"]) else f"nitro {command}", *args]
    try:
        main()
    except Refused as refused:  # by the app's checks, before Hydra wrote anything
        message = None if full_error else user_error_message(refused.error, command)
        if message is None:
            raise refused.error from None
        return _fail(message)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return _fail(str(exc.code), 1)
    except Exception as exc:
        message = None if full_error else user_error_message(exc, command)
        if message is None:
            raise
        return _fail(message)
    finally:
        unquiet_sacct()
    return 0


def _completion_target(args: list[str]) -> tuple[str | None, list[str]]:
    """Tab completion through Hydra: `eval "$(nitro -sc install=bash)"` once; then bash calls
    `nitro -sc query=bash` with the line in COMP_LINE, which goes to the subcommand's app minus its name."""
    if not any(a.startswith("query") for a in args):
        return "train", args  # install/uninstall: one script for every app, registered for `nitro`
    line = os.environ.get("COMP_LINE", "")
    point = int(os.environ.get("COMP_POINT", len(line)))
    words = line[:point].split(" ")
    if len(words) <= 2:  # still typing the subcommand
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in COMMANDS if c.startswith(prefix)))
        return None, []
    if words[1] not in ("train", "tune", "eval", "export", "report"):
        return None, []
    cut = len(words[0]) + 1 + len(words[1])  # drop " <subcommand>" but keep the program name
    os.environ["COMP_LINE"] = line[: len(words[0])] + line[cut:]
    os.environ["COMP_POINT"] = str(point - (cut - len(words[0])))
    return words[1], args


_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Set (to 1) when nitro chose the BLAS thread count itself: a SLURM job, which inherits the environment of
# the busy login node that submitted it, may then pick its own (see configs/hydra/launcher/slurm_cluster).
AUTO_THREADS_MARK = "NITRO_AUTO_BLAS_THREADS"


def _parallel_local_sweep(args: list[str]) -> bool:
    """A multirun whose launcher starts every job at once on this machine (submitit_local)."""
    return (any(a in ("-m", "--multirun") for a in args)
            and any(re.fullmatch(r"(\+|\+\+)?hydra/launcher=submitit_local", a) for a in args))


def _single_blas_thread_when_busy(args: list[str] | None = None) -> None:
    """Use one BLAS thread when the CPUs are already busy (unless the user chose a thread count).

    On a loaded machine OpenBLAS threads wait on each other for whole scheduler time slices: an MLP1
    epoch measured 8 s instead of 0.2 s on 2 busy cores. Results are exact either way; only speed changes.
    Must run before NumPy is imported. Sweep jobs inherit the choice through the environment (every
    launcher's job processes do). The jobs of a submitit_local sweep all start at once, so they get one
    thread each whatever the load; joblib gives its workers cpu_count // n_jobs threads by itself.
    """
    if "numpy" in sys.modules or any(v in os.environ for v in _THREAD_VARS):
        return
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    if load >= (os.cpu_count() or 1) - 0.5 or _parallel_local_sweep(args or []):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.environ[AUTO_THREADS_MARK] = "1"


def _short_blas_spin() -> None:
    """Let idle OpenBLAS threads sleep at once, not spin 2^28 cycles (about 0.1 s) after each product.

    Between products the engine's own threads (sgd_update) need those cores: with the default spin, two
    sgd_update threads next to one spinning BLAS thread were no faster than one. OPENBLAS_THREAD_TIMEOUT is
    log2 of the cycles to spin, 4 its least. Must run before NumPy is imported; a value set by the user wins.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


# The width rich lays out for when stdout is no terminal: wide enough that nothing wraps.
UNWRAPPED_COLUMNS = "10000"


def _unwrapped_when_not_a_terminal() -> None:
    """Let rich (tables, `wrote <path>` lines) wrap nothing when stdout is no terminal, unless COLUMNS is set.

    There rich wraps at 80 columns (or at the width of a terminal on stderr, as in `nitro ... | tee log`),
    which splits paths and table headers in logs and pipes. rich reads COLUMNS whenever it lays out, so
    this covers every Console of every command; jobs a sweep starts inherit it, and their stdout is a file.
    """
    try:
        piped = not sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        piped = True
    if piped and "COLUMNS" not in os.environ:
        os.environ["COLUMNS"] = UNWRAPPED_COLUMNS


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nitro` console script; returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    _single_blas_thread_when_busy(args)
    _short_blas_spin()
    _unwrapped_when_not_a_terminal()
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] in ("-V", "--version"):
        print(f"nitro {__version__}")
        return 0
    if args[0] in ("-sc", "--shell-completion"):
        command, rest = _completion_target(args)
        if command is None:
            return 0
    else:
        command, rest = args[0], args[1:]
    try:
        if command == "train":
            from .apps.train import main as app
        elif command == "tune":
            from .apps.tune import main as app
        elif command == "eval":
            from .apps.evaluate import main as app
        elif command == "export":
            from .apps.export import main as app
        elif command == "report":
            from .apps.report import main as app
        elif command == "data":
            from .apps.data import main as data_main

            return int(data_main(rest) or 0)
        else:
            return _fail(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)} (nitro --help)")
        return _run_hydra_app(command, app, rest)
    except NitroError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)



def console_main() -> None:
    """`sys.exit(main())`, for `python -m nitro_cli.cli`."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
