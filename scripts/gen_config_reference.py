"""Writes docs/reference/configs.md, the reference of every config key, from nitro's own configs.

Nothing in the page is written by hand: the keys, their defaults and the presets' values come from the YAML
files in src/nitro_cli/configs, and each key's meaning is the comment block directly above it. The comment
block at the top of a file describes the file (a command, or one preset of a group). A key without a comment
of its own takes the comment of the same key in another preset of its group; a key inside a commented mapping
(optimizer.plateau.factor) points to that mapping; `name`/`preset`, whose value is the preset's own name,
say so. Anything else has no meaning to show and is listed by `--missing` (tests/test_docs.py requires that
list to be empty), so a key added without a comment shows up in the tests, not as a blank in the manual.

    python scripts/gen_config_reference.py            # (re)write the page
    python scripts/gen_config_reference.py --check    # exit 1 if the committed page is stale
    python scripts/gen_config_reference.py --missing  # keys without a meaning, one per line
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "src" / "nitro_cli" / "configs"
OUT = ROOT / "docs" / "reference" / "configs.md"

# Each top-level YAML file is a command's config (`nitro <name>`); these come first, in this order.
FIRST_COMMANDS = ("train", "eval", "export", "report")
# Hydra plugin groups whose presets are documented (hydra/help only holds display templates).
HYDRA_GROUPS = ("launcher", "sweeper")
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?:\s|$)")


@dataclass
class ConfigFile:
    """One YAML file: its values, its description (top comment block) and the comment above each key."""

    path: Path
    values: dict[str, Any]
    description: str
    comments: dict[tuple[str, ...], str] = field(default_factory=dict)
    # A key without a comment of its own, right below a commented sibling with no blank line in between: the
    # comment above the block describes the block (data.crop_pad after data.augment).
    block_of: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)


COMMAND_LINE = re.compile(r"^(?P<lead>.*?:\s+|)(?P<command>nitro (?!\w+:)\S.*)$")


def _escape(text: str) -> str:
    """Prose for Markdown: < > & outside `code` spans as entities (`<run dir>` would be an HTML tag)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _text(lines: list[str]) -> str:
    """A comment block as Markdown: wrapped prose joined into one paragraph; a line that is (or ends in) a
    whole `nitro ...` command, or is indented inside the comment, on a line of its own as code."""
    segments: list[tuple[str, str]] = []  # ("prose" | "code", text)
    for line in lines:
        m = COMMAND_LINE.match(line.strip())
        if m and (line.startswith(" ") or not segments or m.group("lead")):
            if m.group("lead"):
                segments.append(("prose", m.group("lead").strip()))
            segments.append(("code", m.group("command").strip()))
        elif line.startswith(" ") and line.strip():
            segments.append(("code", line.strip()))
        elif line.strip():
            segments.append(("prose", line.strip()))
    out = ""
    for i, (kind, text) in enumerate(segments):
        if kind == "code":
            out += ("<br>" if out else "") + f"`{text}`"
        else:
            after_code = i > 0 and segments[i - 1][0] == "code"
            out += ("<br>" if after_code else (" " if out else "")) + _escape(text)
    return out


def read_config(path: Path) -> ConfigFile:
    """Values by yaml.safe_load; comments by a line scan of this simple subset of YAML (block mappings,
    block lists, one key per line)."""
    raw = path.read_text(encoding="utf-8").splitlines()
    values = yaml.safe_load("\n".join(raw)) or {}
    description: list[str] = []
    comments: dict[tuple[str, ...], str] = {}
    block_of: dict[tuple[str, ...], tuple[str, ...]] = {}
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings that enclose the current line
    seen_key = False
    block: tuple[str, ...] | None = None  # the commented key that starts the current block of keys
    for line in raw:
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped[1:].removeprefix(" ").rstrip()
            if body.strip().startswith("@package"):
                continue
            pending.append(body)
            continue
        if not stripped:  # a blank line ends a comment block; the first one is the file's description
            if pending and not seen_key and not description:
                description = pending
            pending, block = [], None
            continue
        m = KEY_LINE.match(line)
        if m is None:  # a list item or a continuation: not a key
            pending = []
            continue
        indent, key = len(m.group("indent")), m.group("key")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path_key = (*[k for _, k in stack], key)
        if not seen_key and not description:  # the top block, directly above the first key: the description
            description, pending = pending, []
        seen_key = True
        if pending:
            comments[path_key] = _text(pending)
            block = path_key
        elif block is not None and block[:-1] == path_key[:-1]:
            block_of[path_key] = block
        elif block is not None and len(path_key) <= len(block):
            block = None
        pending = []
        stack.append((indent, key))
    return ConfigFile(path, values, _text(description), comments, block_of)


def _flat(values: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaf keys (and empty or null mappings) of a config as paths; lists stay values."""
    out: dict[tuple[str, ...], Any] = {}
    if isinstance(values, dict) and values:
        out[prefix] = values if prefix else None
        for k, v in values.items():
            out.update(_flat(v, (*prefix, str(k))))
        if prefix:
            out.pop(prefix)
    else:
        out[prefix] = values
    return out


def _value(v: Any) -> str:
    if isinstance(v, str):
        return f"`{v}`" if v else '`""`'
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n...") or text.endswith("..."):
        text = text.rsplit("\n", 1)[0].strip()
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


@dataclass
class Meaning:
    text: str
    missing: bool = False


def _meaning(path: tuple[str, ...], files: list[ConfigFile], preset: str | None, value: Any,
             prefix: str = "") -> Meaning:
    for f in files:  # its own comment first (files[0] is the file the key is read from), then the group's
        if path in f.comments:
            return Meaning(f.comments[path])
    for f in files:
        if path in f.block_of:
            return Meaning(f"See `{prefix}{'.'.join(f.block_of[path])}` (above).")
    for depth in range(len(path) - 1, 0, -1):
        for f in files:
            if path[:depth] in f.comments:
                return Meaning(f"Part of `{prefix}{'.'.join(path[:depth])}` (above).")
    if preset is not None and path in (("name",), ("preset",)) and value == preset:
        return Meaning("The preset's name (set by choosing the preset).")
    keys = [k for k in files[0].values if k != "defaults"]
    if keys == [path[0]] and files[0].description:  # the only key of its file: the file describes it
        return Meaning(files[0].description)
    return Meaning("", missing=True)


def _defaults_list(values: dict[str, Any]) -> list[tuple[str, Any]]:
    """The `group: preset` entries of a defaults list (without `_self_` and Hydra's overrides)."""
    out = []
    for item in values.get("defaults") or []:
        if isinstance(item, dict):
            for k, v in item.items():
                if not str(k).startswith("override "):
                    out.append((str(k), v))
    return out


class Reference:
    def __init__(self, configs: Path = CONFIGS) -> None:
        self.configs = configs
        self.missing: list[str] = []
        self.lines: list[str] = []

    def group_files(self, group: str) -> dict[str, ConfigFile]:
        folder = self.configs / group
        return {p.relative_to(folder).with_suffix("").as_posix(): read_config(p)
                for p in sorted(folder.rglob("*.yaml"))}

    def key_table(self, files: list[ConfigFile], prefix: str, preset: str | None,
                  skip: tuple[str, ...] = ("defaults", "hydra"), names: list[str] | None = None) -> None:
        """key | default | meaning, for the keys of every file (a group's presets, files[0] its default:
        a key only some presets have says which); each key's meaning comes from the first file with one."""
        self.lines += ["| key | default | meaning |", "|---|---|---|"]
        rows: dict[tuple[str, ...], list[int]] = {}  # key -> the files that hold it
        for i, f in enumerate(files):
            for path in _flat(f.values):
                if path and path[0] not in skip:
                    rows.setdefault(path, []).append(i)
        shown: set[tuple[str, ...]] = set()
        for path, holders in rows.items():
            for depth in range(1, len(path)):  # a commented mapping gets its own row, above its keys
                parent = path[:depth]
                if parent not in shown and any(parent in f.comments for f in files):
                    shown.add(parent)
                    text = next(f.comments[parent] for f in files if parent in f.comments)
                    self.lines.append(f"| `{prefix}{'.'.join(parent)}` | the keys below | {_cell(text)} |")
            first = files[holders[0]]
            value = _flat(first.values)[path]
            own = [first, *(f for f in files if f is not first)]
            meaning = _meaning(path, own, names[holders[0]] if names else preset, value, prefix)
            full = prefix + ".".join(path)
            if meaning.missing:
                self.missing.append(f"{full} ({first.path.relative_to(self.configs)})")
            shown_value = _value(value)
            if names and len(holders) < len(files):  # a key of some presets only
                shown_value += " (only in " + ", ".join(f"`{names[i]}`" for i in holders) + ")"
            self.lines.append(f"| `{full}` | {shown_value} | {_cell(meaning.text)} |")
        if self.lines[-1] == "|---|---|---|":  # no key of its own (e.g. a command that reuses train's)
            del self.lines[-2:]
        else:
            self.lines.append("")

    def commands(self) -> None:
        def order(name: str) -> tuple[int, str]:
            return (FIRST_COMMANDS.index(name) if name in FIRST_COMMANDS else len(FIRST_COMMANDS), name)

        names = sorted((p.stem for p in self.configs.glob("*.yaml")), key=order)
        for name in names:
            command = f"nitro {name}"
            f = read_config(self.configs / f"{name}.yaml")
            self.lines += [f"## `{command}`", "", f.description, ""]
            groups = _defaults_list(f.values)
            if groups:
                shown = ", ".join(f"`{g}={'null' if p is None else p}`" for g, p in groups)
                self.lines += [f"Config groups and the preset each starts from: {shown}.", ""]
            self.key_table([f], "", None)
            run_dir = (f.values.get("hydra") or {}).get("run", {}).get("dir")
            sweep_dir = (f.values.get("hydra") or {}).get("sweep", {}).get("dir")
            if run_dir:
                where = f"Output folder (`hydra.run.dir`): `{run_dir}`"
                if sweep_dir:
                    where += f"; a sweep's (`hydra.sweep.dir`): `{sweep_dir}`, one subfolder per job"
                self.lines += [where + ".", ""]

    def group(self, group: str, default: str | None) -> None:
        files = self.group_files(group)
        names = list(files)
        base = default if default in files else names[0]
        ordered = [files[base], *(files[n] for n in names if n != base)]
        self.lines += [f"## `{group}=`", "",
                       f"Presets: {', '.join(f'`{n}`' for n in names)}"
                       + (f" (default: `{default}`)." if default else "."), ""]
        for n in names:
            self.lines.append(f"- `{group}={n}`: {files[n].description or '(no description)'}")
        self.lines += ["", f"Keys, with the values of `{group}={base}`:", ""]
        self.key_table(ordered, f"{group}.", base, names=[base, *(n for n in names if n != base)])
        base_flat = _flat(files[base].values)
        diffs = []
        for n in names:
            if n == base:
                continue
            flat = _flat(files[n].values)
            changed = [f"`{group}.{'.'.join(p)}={_value(v).strip('`')}`" for p, v in flat.items()
                       if p and p[0] not in ("name", "preset", "defaults")
                       and base_flat.get(p, object()) != v]
            parents = [d for d in files[n].values.get("defaults") or []
                       if isinstance(d, str) and d != "_self_"]
            if parents:
                changed.insert(0, "the presets " + ", ".join(f"`{d}`" for d in parents) + " together")
            diffs.append(f"- `{group}={n}`: " + (", ".join(changed) if changed else "the same values"))
        if diffs:
            self.lines += [f"The other presets differ from `{group}={base}` in:", "", *diffs, ""]

    def global_presets(self, group: str) -> None:
        """A group whose presets are `@package _global_` (experiment=, ...): each selects presets of other
        groups and pins keys anywhere, so a table of what each one sets."""
        files = self.group_files(group)
        intro = ("An experiment preset selects presets of the groups above and pins the keys it names (the "
                 "other keys keep the values of those presets). The shipped ones are the paper's table rows:"
                 if group == "experiment" else
                 "Each preset selects presets of other groups and sets the keys it names:")
        self.lines += [f"## `{group}=`", "", intro, ""]
        keys: list[tuple[str, ...]] = []
        for f in files.values():
            for p in _flat(f.values):
                if p and p[0] not in ("defaults", group) and p not in keys:
                    keys.append(p)
        head = ["preset", "groups", *[f"`{'.'.join(p)}`" for p in keys]]
        self.lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, f in files.items():
            groups = ", ".join(f"{k.removeprefix('override /')}={v}" for item in f.values.get("defaults", [])
                               if isinstance(item, dict) for k, v in item.items())
            flat = _flat(f.values)
            cells = [_value(flat[p]) if p in flat else "" for p in keys]
            self.lines.append("| " + " | ".join([f"`{name}`", groups, *cells]) + " |")
        self.lines.append("")
        for name, f in files.items():
            self.lines.append(f"- `{group}={name}`: {f.description}")
        self.lines.append("")

    def hydra_group(self, kind: str) -> None:
        """hydra/<kind>=<preset> presets shipped with nitro (launchers, sweepers)."""
        folder = self.configs / "hydra" / kind
        for path in sorted(folder.glob("*.yaml")):
            f = read_config(path)
            self.lines += [f"## `hydra/{kind}={path.stem}`", "", f.description, ""]
            self.key_table([f], f"hydra.{kind}.", None, skip=("defaults", "_target_"))
            parents = [d for d in f.values.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
            if parents:
                shown = ", ".join(f"`{d}`" for d in parents)
                self.lines += [f"It extends Hydra's {shown} {kind}, whose other settings apply too.", ""]

    @staticmethod
    def is_global(folder: Path) -> bool:
        """Whether the group's presets are `# @package _global_` (they set keys anywhere)."""
        return any("@package _global_" in "".join(p.read_text(encoding="utf-8").splitlines(True)[:3])
                   for p in folder.rglob("*.yaml"))

    def render(self) -> str:
        train = read_config(self.configs / "train.yaml")
        defaults = dict(_defaults_list(train.values))
        self.lines = [
            "# Config keys",
            "",
            "<!-- Generated by scripts/gen_config_reference.py from src/nitro_cli/configs; do not edit. "
            "`make docs` regenerates it and tests/test_docs.py checks that it is current. -->",
            "",
            "Every key that `nitro` reads, with its default and its meaning, as the YAML files in "
            "`src/nitro_cli/configs` (also at `./configs`) say. Set any of them on the command line "
            "(`nitro train trainer.max_epochs=5`), choose a group's preset with `group=preset` "
            "(`nitro train model=vgg8b`), and print what a command composes with `--cfg job` "
            "(see [Configs, overrides and presets](../configs.md)).",
            "",
        ]
        self.commands()
        self.lines += ["# Config groups", ""]
        done = set()
        for group, preset in defaults.items():  # in the order of its defaults list
            folder = self.configs / group
            if folder.is_dir() and not self.is_global(folder):
                self.group(group, preset)
                done.add(group)
        for folder in sorted(p for p in self.configs.iterdir() if p.is_dir() and p.name not in done):
            if folder.name == "hydra" or folder.name.startswith("__") or not any(folder.rglob("*.yaml")):
                continue
            if self.is_global(folder):
                self.global_presets(folder.name)
            else:
                self.group(folder.name, defaults.get(folder.name))
        for kind in HYDRA_GROUPS:
            if (self.configs / "hydra" / kind).is_dir():
                self.lines += [f"# Hydra {kind}s", ""]
                self.hydra_group(kind)
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"page to write (default: {OUT.relative_to(ROOT)})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from a fresh one")
    parser.add_argument("--missing", action="store_true", help="list the keys that have no meaning")
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="config folder (default: nitro's own)")
    args = parser.parse_args(argv)
    ref = Reference(args.configs)
    text = ref.render()
    if args.missing:
        print("\n".join(ref.missing))
        return 1 if ref.missing else 0
    current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
    if args.check:
        if current != text:
            print(f"{args.out} is stale: run `python scripts/gen_config_reference.py` and commit it",
                  file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
