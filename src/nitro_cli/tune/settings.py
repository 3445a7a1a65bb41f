"""The settings of a `nitro tune` study (the `hydra.sweeper` node), checked before anything runs.

Plain Python, no Optuna: a bad search space or a typo in a pruner's name is refused in a second, with the
key that is wrong, also where Optuna is not installed yet.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NitroError

WHERE = "hydra.sweeper"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "successive_halving", "none")

# Keys a search may not vary, and why. The objective is the validation accuracy: the keys that decide which
# images are the validation split, or what picks the epoch it is read at, must be the same in every trial,
# or trials would be scored on different questions.
FIXED_KEYS = {
    "seed": "the run seed draws the validation split (and every other random draw): a search over it "
            "finds a lucky split, not better settings; tune with one seed, then check the winner over seeds "
            "with nitro train -m seed='range(42,52)'",
    "data.name": "every trial must be scored on the same validation split of the same dataset",
    "data.root": "every trial must be scored on the same validation split of the same dataset",
    "trainer.name": "the protocol decides the validation split and what the objective is read from",
    "trainer.val_fraction": "it decides which images the objective is measured on",
    "trainer.monitor": "the validation accuracy must pick each trial's best epoch (trainer.monitor=val); "
                       "the test set is never the objective",
    "trainer.limit_test_batches": "it decides how many validation images the objective is measured on",
    "resume": "a search runs every trial from scratch",
    "experiment": "it is a run's name in reports, not a setting",
    "engine": "it changes where a run computes, not what (results are bit-identical)",
    "logger": "it changes where a run's metrics are mirrored, not the run",
    "trainer.progress": "it changes the display only",
    "trainer.eval_batch_size": "it changes speed only",
}


@dataclass(frozen=True)
class Param:
    """One searched config key: an integer or float range (optionally on a log scale), or a list of choices.

    Choices that are not scalars (e.g. a list of hidden widths) are given to Optuna as their override text
    (`encoded`), since Optuna's categorical values must be scalars; `override` turns either into `key=value`.
    """

    key: str
    type: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    encoded: bool = False

    def describe(self) -> dict[str, Any]:
        """The definition as plain data (stored with the study, to recognise it when it continues)."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log, "step": self.step}

    def probes(self) -> list[Any]:
        """Values that together reach every corner of the range: what a check composes and validates."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def override(self, value: Any) -> str:
        """The Hydra override that sets this key to `value` (a value Optuna drew for it)."""
        return f"{self.key}={value if self.encoded else render(value)}"


@dataclass(frozen=True)
class SamplerSettings:
    name: str
    seed: int | None
    n_startup_trials: int


@dataclass(frozen=True)
class PrunerSettings:
    name: str
    n_startup_trials: int
    n_warmup_steps: int
    min_resource: int
    reduction_factor: int


@dataclass(frozen=True)
class Settings:
    """A checked `hydra.sweeper` node."""

    storage: str | None
    study_name: str | None
    n_trials: int
    n_jobs: int | None
    sampler: SamplerSettings
    pruner: PrunerSettings
    space: tuple[Param, ...]

    def storage_url(self, sweep_dir: Path) -> str:
        """Where the study lives: `storage`, or an SQLite file in the sweep folder."""
        return self.storage or f"sqlite:///{Path(sweep_dir).absolute() / 'study.db'}"


def render(value: Any) -> str:
    """`value` in Hydra's override grammar (strings quoted unless they are plain words)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_/][\w/.\-+@%]*", value, re.ASCII) and value.lower() not in (
                "null", "true", "false", "inf", "nan"):
            return value  # a word or a path: Hydra reads it back as this string
        # Quoted: a quote, and the backslashes before a quote or the closing one, are escaped, and `${`,
        # which would still interpolate there.
        quoted = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
        return "'" + quoted.replace("${", "\\${") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{render(v)}" for k, v in value.items()) + "}"
    raise NitroError(f"cannot write {value!r} as an override value")


def _number(v: Any, key: str, integer: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise NitroError(f"{key} must be {'an integer' if integer else 'a number'}, got {v!r}")
    if not math.isfinite(v):
        raise NitroError(f"{key} must be finite, got {v!r}")
    return v


def _count(v: Any, key: str, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise NitroError(f"{key} must be an integer >= {least}, got {v!r}")
    return v


def _only(node: Any, allowed: tuple[str, ...], key: str) -> Mapping[str, Any]:
    if not isinstance(node, Mapping):
        raise NitroError(f"{key} must be a mapping, got {node!r}")
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise NitroError(f"unknown key {key}.{unknown[0]}; valid keys: {', '.join(allowed)}")
    return node


def fixed_key_reason(key: str) -> str | None:
    """Why a search may not vary `key`, or None. A group (`trainer`) covers its keys, a key its sub-keys."""
    for fixed, why in FIXED_KEYS.items():
        if key == fixed or key.startswith(fixed + ".") or fixed.startswith(key + "."):
            return why
    return None


def parse_param(key: Any, spec: Any) -> Param:
    """One entry of the search space, e.g. `optimizer.lr_inv: {type: int, low: 64, high: 8192, log: true}`."""
    where = f"{WHERE}.space.{key}"
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
        raise NitroError(f"{WHERE}.space: {key!r} is not a config key (write it dotted, e.g. "
                         "optimizer.lr_inv)")
    why = fixed_key_reason(key)
    if why is not None:
        raise NitroError(f"{where}: a search may not vary {key}: {why}")
    spec = _only(spec, ("type", "low", "high", "log", "step", "choices"), where)
    kind = spec.get("type")
    if kind == "categorical":
        _only(spec, ("type", "choices"), where)
        choices = spec.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise NitroError(f"{where}.choices must be a non-empty list, e.g. [32, 64, 128]")
        texts = [render(c) for c in choices]
        if len(set(texts)) != len(texts):
            raise NitroError(f"{where}.choices lists a value twice: {choices}")
        scalar = all(c is None or isinstance(c, bool | int | float | str) for c in choices)
        return Param(key, kind, choices=tuple(choices) if scalar else tuple(texts), encoded=not scalar)
    if kind not in ("int", "float"):
        raise NitroError(f"{where}.type must be int, float or categorical, got {kind!r}")
    integer = kind == "int"
    if "low" not in spec or "high" not in spec:
        raise NitroError(f"{where} needs low and high (the range's ends, both included)")
    low, high = _number(spec["low"], f"{where}.low", integer), _number(spec["high"], f"{where}.high", integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise NitroError(f"{where}.log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}.step", integer)
        if step <= 0 or log:
            raise NitroError(f"{where}.step must be > 0 and is for a linear range (not with log: true)")
    if low >= high:
        raise NitroError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise NitroError(f"{where}: a log-scale range needs low > 0, got {low}")
    return Param(key, kind, low, high, log, step)


def parse_settings(node: Mapping[str, Any]) -> Settings:
    """Check the `hydra.sweeper` node (a plain mapping); raises NitroError naming the first bad key."""
    node = _only(node, ("_target_", "storage", "study_name", "n_trials", "n_jobs", "sampler", "pruner",
                        "space"), WHERE)
    for key in ("storage", "study_name"):
        if node.get(key) is not None and (not isinstance(node[key], str) or not node[key]):
            raise NitroError(f"{WHERE}.{key} must be a non-empty string or null, got {node[key]!r}")
    n_jobs = node.get("n_jobs")
    sampler = _only(node.get("sampler") or {}, ("name", "seed", "n_startup_trials"), f"{WHERE}.sampler")
    pruner = _only(node.get("pruner") or {}, ("name", "n_startup_trials", "n_warmup_steps", "min_resource",
                                              "reduction_factor"), f"{WHERE}.pruner")
    if sampler.get("name", "tpe") not in SAMPLERS:
        raise NitroError(f"{WHERE}.sampler.name must be one of {', '.join(SAMPLERS)}, got "
                         f"{sampler['name']!r}")
    if pruner.get("name", "median") not in PRUNERS:
        raise NitroError(f"{WHERE}.pruner.name must be one of {', '.join(PRUNERS)}, got {pruner['name']!r}")
    seed = sampler.get("seed")
    space = node.get("space") or {}
    if not isinstance(space, Mapping) or not space:
        raise NitroError("the search space is empty: pick one, e.g. `nitro tune search=mlp1_mini`, or write "
                         f"your own {WHERE}.space (see configs/search/mlp1_mini.yaml)")
    return Settings(
        storage=node.get("storage"),
        study_name=node.get("study_name"),
        n_trials=_count(node.get("n_trials"), f"{WHERE}.n_trials", 1),
        n_jobs=None if n_jobs is None else _count(n_jobs, f"{WHERE}.n_jobs", 1),
        sampler=SamplerSettings(
            name=sampler.get("name", "tpe"),
            seed=None if seed is None else _count(seed, f"{WHERE}.sampler.seed", 0),
            n_startup_trials=_count(sampler.get("n_startup_trials", 10), f"{WHERE}.sampler.n_startup_trials",
                                    0)),
        pruner=PrunerSettings(
            name=pruner.get("name", "median"),
            n_startup_trials=_count(pruner.get("n_startup_trials", 5), f"{WHERE}.pruner.n_startup_trials", 0),
            n_warmup_steps=_count(pruner.get("n_warmup_steps", 0), f"{WHERE}.pruner.n_warmup_steps", 0),
            min_resource=_count(pruner.get("min_resource", 1), f"{WHERE}.pruner.min_resource", 1),
            reduction_factor=_count(pruner.get("reduction_factor", 3), f"{WHERE}.pruner.reduction_factor",
                                    2)),
        space=tuple(parse_param(k, v) for k, v in space.items()),
    )


def require_validation(cfg: Mapping[str, Any], what: str = "the config") -> None:
    """Refuse a run config whose trials could not be scored on a validation split."""
    t = cfg["trainer"]
    if t["val_fraction"] == 0:
        raise NitroError(f"{what} has no validation split (trainer.val_fraction=0, as trainer={t['name']}): "
                         "nitro tune maximizes the validation accuracy, never the test accuracy; use "
                         "trainer=default (or set trainer.val_fraction > 0 and trainer.monitor=val)")
    if t["monitor"] != "val":
        raise NitroError(f"{what} picks the best epoch, lr_inv cuts and early stopping on the test set "
                         "(trainer.monitor=test): nitro tune never lets the test set choose; set "
                         "trainer.monitor=val (trainer=default does)")
