"""`nitro data list` and `nitro data fetch NAME`: see which datasets are usable, and get the missing ones.

Downloads go through torchvision (optional: `pip install 'nitro-cli[download]'`), which writes exactly the
layouts the readers expect; without it, or offline, the command says which files to place where.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nitro_cli.data import DATASETS, data_root, verify_dataset
from nitro_cli.data.readers import FileStatus, dataset_files, embedded_path
from nitro_cli.data.registry import DatasetInfo, dataset_info
from nitro_cli.errors import NitroError, os_error_text

_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _root_source(root: str | None) -> str:
    if root:
        return "--root"
    return "$NITRO_DATA" if os.environ.get("NITRO_DATA") else "default"


def _location(info: DatasetInfo, root: str | None) -> str:
    """The folder under the root of the layout in use; all accepted folders when none is present."""
    if info.embedded:
        return f"(package) {embedded_path().name}"
    files = dataset_files(info.name, root)
    if any(path is not None for _, path in files):
        return str(Path(files[0][0].path).parent) + "/"
    return "\nor ".join(str(Path(layout[0].path).parent) + "/" for layout in info.layouts)


def _summarize(statuses: list[FileStatus]) -> tuple[str, str]:
    """A one-word status for a dataset and the detail line explaining it."""
    missing = [s for s in statuses if s.problem == "missing"]
    bad = [s for s in statuses if not s.ok and s.problem != "missing"]
    if bad:
        return "[red]corrupt[/]", "; ".join(f"{s.path.name}: {s.problem}" for s in bad)
    if len(missing) == len(statuses):
        return "[yellow]missing[/]", ""
    if missing:
        return "[yellow]incomplete[/]", "missing " + ", ".join(s.path.name for s in missing)
    return "[green]verified[/]", "checksums match"


def _presence(name: str, root: str | None) -> tuple[str, str]:
    """Status from file presence only (no reading), for `list --no-verify`."""
    files = dataset_files(name, root)
    absent = [spec for spec, path in files if path is None]
    if not files:
        return "[green]present[/]", "embedded"
    if len(absent) == len(files):
        return "[yellow]missing[/]", ""
    if absent:
        return "[yellow]incomplete[/]", "missing " + ", ".join(Path(s.path).name for s in absent)
    return "[green]present[/]", "not checksummed (--no-verify)"


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    """Print one row per dataset: where it is expected and whether it is there and intact."""
    root = data_root(args.root)
    if _root_source(args.root) != "default" and not root.is_dir():  # a root the user named: a typo?
        raise NitroError(f"data root {root} ({_root_source(args.root)}) is not a folder; fix the path, or "
                         "create it and fetch datasets into it with `nitro data fetch <name> --root ...`")
    console.print(f"data root: {root}  ({_root_source(args.root)})", markup=False, soft_wrap=True)
    table = Table("dataset", "location", "status", "details", caption="location: under the data root")
    for column in table.columns:
        column.overflow = "fold"  # paths must stay whole, never end in an ellipsis
    for name, info in DATASETS.items():
        status, detail = _presence(name, args.root) if args.no_verify else _summarize(
            verify_dataset(name, args.root))
        if "missing" in status and not info.embedded:
            detail = (detail + "; " if detail else "") + f"run: nitro data fetch {name}"
        table.add_row(name, _location(info, args.root), status, detail)
    console.print(table)
    return 0


def _manual_instructions(info: DatasetInfo, root: Path) -> str:
    """Which files to place where, when fetching automatically is impossible."""
    lines = []
    for i, layout in enumerate(info.layouts):
        folder = root / Path(layout[0].path).parent
        lead = "Place these files in" if i == 0 else "Or place the python version's files in"
        lines.append(f"{lead} {folder}/:")
        for spec in layout:
            suffix = "[.gz]" if spec.gz_ok else ""
            what = "md5 of the uncompressed content" if spec.gz_ok else "md5"
            md5 = f"  ({what} {spec.md5})" if spec.md5 else ""
            lines.append(f"  {Path(spec.path).name}{suffix}{md5}")
    if info.name == "cifar10":
        lines.append("Both CIFAR-10 versions are read: the binary one in cifar-10-batches-bin/ "
                     "(cifar-10-binary.tar.gz) and the python one in cifar-10-batches-py/ "
                     "(cifar-10-python.tar.gz), from https://www.cs.toronto.edu/~kriz/cifar.html.")
    else:
        lines.append("Raw IDX files and their gzip-compressed .gz versions are both read.")
    lines.append(f"Source: {info.source}. Then check them with: nitro data list")
    return "\n".join(lines)


def _print_statuses(statuses: list[FileStatus], console: Console) -> None:
    for s in statuses:
        mark = "[green]ok[/]" if s.ok else f"[red]{s.problem}[/]"
        console.print(f"  {s.path}: {mark}", soft_wrap=True)


def cmd_fetch(args: argparse.Namespace, console: Console) -> int:
    """Download a dataset through torchvision into the data root, then verify every file."""
    info = dataset_info(args.name)
    if info.embedded:
        console.print(f"{info.name} ships with the package ({embedded_path()}); nothing to fetch.",
                      markup=False, soft_wrap=True)
        return 0
    root = data_root(args.root)
    if all(s.ok for s in verify_dataset(info.name, args.root)):
        console.print(f"{info.name} is already in {root} and its checksums match.", markup=False,
                      soft_wrap=True)
        return 0
    try:
        import torchvision.datasets as tvd
    except ImportError:
        print(f"cannot fetch {info.name} automatically: torchvision is not installed "
              "(pip install 'nitro-cli[download]').", file=sys.stderr)
        print(_manual_instructions(info, root), file=sys.stderr)
        return 2
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NitroError(f"cannot create the data root {root}: {e.strerror or e}") from None
    console.print(f"downloading {info.name} into {root} with torchvision ...", markup=False, soft_wrap=True)
    dataset_cls = getattr(tvd, _TORCHVISION_CLASS[info.name])
    try:
        for train in (True, False):
            dataset_cls(root=str(root), train=train, download=True)
    except Exception as e:  # network down, mirror gone, disk full: all end in the manual route
        print(f"download of {info.name} failed ({type(e).__name__}: {e}).", file=sys.stderr)
        print(_manual_instructions(info, root), file=sys.stderr)
        return 2
    statuses = verify_dataset(info.name, args.root)
    _print_statuses(statuses, console)
    if not all(s.ok for s in statuses):
        print(f"error: the downloaded {info.name} files do not match the expected checksums; delete them "
              "and retry, or place the files by hand:", file=sys.stderr)
        print(_manual_instructions(info, root), file=sys.stderr)
        return 2
    console.print(f"{info.name} is ready in {root}.", markup=False, soft_wrap=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nitro data", description="List, verify and fetch datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,fetch}")
    p_list = sub.add_parser("list", help="show each dataset, where it is expected and whether it is intact")
    p_list.add_argument("--root", help="data root (default: $NITRO_DATA, else ~/.cache/nitro/datasets)")
    p_list.add_argument("--no-verify", action="store_true", help="check presence only, skip checksums")
    p_fetch = sub.add_parser("fetch", help="download a dataset (torchvision) and verify it")
    p_fetch.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    p_fetch.add_argument("--root", help="data root (default: $NITRO_DATA, else ~/.cache/nitro/datasets)")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of `nitro data ...` (argv without the leading 'data'); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    console = Console()
    try:
        return cmd_list(args, console) if args.command == "list" else cmd_fetch(args, console)
    except NitroError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a --root the system refuses (a name too long, no permission)
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
