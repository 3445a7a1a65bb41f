"""What a run is, judged from the config it ran with: its protocol, and whether it is a row of the paper.

Why from the config and not from names: `experiment` and `trainer.name` are free text that overrides leave
unchanged, so `experiment=paper/mlp1_mnist data=mnist_mini` still calls itself the paper row and
`trainer.name=paper` still calls the default trainer "paper". A run is compared with a paper row only when
its config equals that row's preset under one of the shipped protocols, apart from keys that do not change
what it computes (seed, engine, data root, display) and its epoch budget, which the report shows instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .paper import PaperRow, paper_row

# Keys that do not make a run another experiment. trainer.max_epochs is shown as the budget instead.
IGNORED = ("seed", "resume", "engine", "data.root", "trainer.progress", "trainer.eval_batch_size",
           "trainer.max_epochs", "logger")
# Keys of the trainer section that do not make it another protocol.
_NOT_PROTOCOL = ("name", "max_epochs", "progress", "eval_batch_size")
# Keys that older nitro versions did not write, with the value that describes what those versions did.
_EXACT_COMPAT = {"name": "exact", "int8_loss_error": False, "int32_accumulation": False,
                 "head_pool_zero_padding": False, "cnn_linear_double_update": False}

Compose = Callable[[list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Identity:
    """A run's protocol (a trainer preset's name, or "custom"), the paper row it reproduces (None when it is
    not one), the keys in which it differs from the row its `experiment` names, and its arithmetic (a compat
    preset's name, or "custom: " and the switches it turns on)."""

    protocol: str
    paper: PaperRow | None
    modified: tuple[str, ...]
    compat: str = "exact"


class Presets:
    """The shipped presets a report compares runs with, composed on first use (composing takes a while)."""

    def __init__(self, compose: Compose, protocols: tuple[str, ...], compats: tuple[str, ...] = ()) -> None:
        self.compose, self.protocols, self.compats = compose, protocols, compats
        self._cache: dict[tuple[str, ...], dict[str, Any]] = {}

    def config(self, *overrides: str) -> dict[str, Any]:
        if overrides not in self._cache:
            self._cache[overrides] = self.compose(list(overrides))
        return self._cache[overrides]

    def protocol(self, trainer: Mapping[str, Any]) -> str:
        """The trainer preset whose settings `trainer` has, whatever its name says; else "custom"."""
        mine = _without(trainer, _NOT_PROTOCOL)
        for name in self.protocols:
            if mine == _without(self.config(f"trainer={name}")["trainer"], _NOT_PROTOCOL):
                return name
        return "custom"

    def compat(self, section: Mapping[str, Any]) -> str:
        """The compat preset whose switches `section` has, whatever its name says; else "custom: " and the
        switches that are on. A paper row run under a shipped arithmetic is still that row (its arithmetic
        is shown beside it), so that `compat=reference` can be compared with the published numbers."""
        mine = _without(section, ("name",))
        for name in self.compats:
            if mine == _without(self.config(f"compat={name}")["compat"], ("name",)):
                return name
        return "custom: " + (" ".join(sorted(k for k, on in mine.items() if on)) or "none")


def identify(cfg: Mapping[str, Any], presets: Presets) -> Identity:
    """The identity of a run whose config (.hydra/config.yaml) is `cfg`."""
    cfg = _with_legacy_keys(cfg)
    protocol = presets.protocol(cfg.get("trainer") or {})
    compat = presets.compat(cfg["compat"])
    experiment = str(cfg.get("experiment", ""))
    row = paper_row(experiment)
    if row is None:
        return Identity(protocol, None, (), compat)
    pinned = presets.config(f"experiment={experiment}",
                            f"trainer={protocol if protocol in presets.protocols else 'paper'}",
                            *([f"compat={compat}"] if compat in presets.compats else []))
    mine, theirs = _flat(cfg), _flat(pinned)
    modified = tuple(sorted(k for k in mine.keys() | theirs.keys()
                            if not _ignored(k) and mine.get(k, _ABSENT) != theirs.get(k, _ABSENT)))
    return Identity(protocol, None if modified else row, modified, compat)


_ABSENT = object()


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED)


def _without(section: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in keys}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping) or not node:
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return {k.rstrip("."): v for k, v in out.items()}


def _with_legacy_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg` with the keys added since it was written, set to what the nitro that wrote it did: exact
    arithmetic, no feature-extractor dropout, the conv amp multiplier on (it was always applied to conv
    blocks before it became a switch; MLPs have none) and whole epochs (no trainer.limit_* batches; the
    runner reads old configs the same way, runner/config.py ADDED_KEYS, but the report sits below it)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}
    out.setdefault("compat", dict(_EXACT_COMPAT))
    if isinstance(out.get("trainer"), dict):
        out["trainer"].setdefault("limit_train_batches", None)
        out["trainer"].setdefault("limit_test_batches", None)
    model, optimizer = out.get("model"), out.get("optimizer")
    if isinstance(model, dict):
        model.setdefault("fe_dropout", 0.0)
        if isinstance(optimizer, dict):
            optimizer.setdefault("conv_amp_multiplier", str(model.get("preset", "")).startswith("vgg"))
    return out


def group_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config as dotted keys ("optimizer.lr_inv"), with the keys added since it was written, and
    without the keys that never separate two groups (IGNORED, except trainer.max_epochs: another budget is
    another group). What a report compares to tell the groups of one experiment apart."""
    return {k: v for k, v in _flat(_with_legacy_keys(cfg)).items()
            if k == "trainer.max_epochs" or not _ignored(k)}
