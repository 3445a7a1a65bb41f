"""Validation of composed run configs before any work starts: types, ranges and unknown keys.

Hydra composes plain YAML; this module is the single place that says what a valid config is, so that a bad
override fails in a second with a message naming the key and the fix, not an hour into a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import NitroError

Check = Callable[[Any, str], Any]
Schema = dict[str, "Check | Schema"]

MODEL_NAMES = ("mlp1", "mlp2", "mlp3", "mlp4", "vgg8b", "vgg11b")
DATASET_NAMES = ("mnist_mini", "mnist", "fashion_mnist", "cifar10")


def _int(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Check:
    def check(v: Any, key: str) -> Any:
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool):
            null = " or null" if optional else ""
            raise NitroError(f"{key} must be an integer{null}, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise NitroError(f"{key} must be {rng}, got {v}")
        return v

    return check


def _float(lo: float, hi: float, hi_open: bool = False) -> Check:
    def check(v: Any, key: str) -> Any:
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise NitroError(f"{key} must be a number, got {v!r}")
        if not (lo <= v < hi if hi_open else lo <= v <= hi):
            raise NitroError(f"{key} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {v}")
        return float(v)

    return check


def _bool(v: Any, key: str) -> Any:
    if not isinstance(v, bool):
        raise NitroError(f"{key} must be true or false, got {v!r}")
    return v


def _str(optional: bool = False) -> Check:
    def check(v: Any, key: str) -> Any:
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise NitroError(f"{key} must be a non-empty string{' or null' if optional else ''}, got {v!r}")
        return v

    return check


def _choice(*options: str) -> Check:
    def check(v: Any, key: str) -> Any:
        if v not in options:
            raise NitroError(f"{key} must be one of {', '.join(options)}; got {v!r}")
        return v

    return check


def _int_list(optional: bool = False, allow_pool: bool = False) -> Check:
    def check(v: Any, key: str) -> Any:
        if v is None and optional:
            return None
        if not isinstance(v, list | tuple) or not v:
            raise NitroError(f"{key} must be a non-empty list of positive integers, e.g. [100, 50]; "
                             f"got {v!r}")
        for item in v:
            if allow_pool and item == "M":
                continue
            if not isinstance(item, int) or isinstance(item, bool) or item < 1:
                extra = ' or "M" (max-pool)' if allow_pool else ""
                raise NitroError(f"{key} must hold positive integers{extra}; got {item!r} in {list(v)}")
        return list(v)

    return check


def _optional_section(schema: Schema) -> Check:
    def check(v: Any, key: str) -> Any:
        return None if v is None else _validate(v, schema, key)

    return check


_WATCH = {"patience": _int(1), "start_epoch": _int(0), "min_delta": _float(0.0, 1.0)}

# The loggers a run may select (configs/logger/), each with its settings; every setting may be left out
# (null: the default the preset describes). `csv` stands for metrics.csv and summary.json, always written.
LOGGERS: dict[str, Schema] = {
    "csv": {},
    "tensorboard": {"save_dir": _str(optional=True)},
    "mlflow": {"tracking_uri": _str(optional=True), "experiment_name": _str(optional=True),
               "run_name": _str(optional=True)},
}


def _loggers(v: Any, key: str) -> Any:
    if not isinstance(v, Mapping):
        raise NitroError(f"{key} must be a mapping of loggers, got {v!r}; select them with e.g. "
                         "logger=tensorboard or 'logger=[tensorboard,mlflow]'")
    unknown = sorted(set(v) - set(LOGGERS))
    if unknown:
        raise NitroError(f"unknown logger {key}.{unknown[0]}; the loggers are {', '.join(LOGGERS)} "
                         "(e.g. logger=tensorboard, or 'logger=[tensorboard,mlflow]')")
    out = {}
    for name, section in v.items():
        if isinstance(section, Mapping) or section is None:  # settings left out take their default
            section = {**dict.fromkeys(LOGGERS[name]), **(section or {})}
        out[name] = _validate(section, LOGGERS[name], f"{key}.{name}")
    return out


TRAIN_SCHEMA: Schema = {
    "seed": _int(0, 2**63 - 1),
    "resume": _str(optional=True),
    "experiment": _str(),
    "data": {
        "name": _choice(*DATASET_NAMES),
        "root": _str(optional=True),
        "augment": _bool,
        "crop_pad": _int(0, 16),
        "flip": _bool,
        "aug_p": _float(0.0, 1.0),
    },
    "model": {
        "preset": _choice(*MODEL_NAMES),
        "hidden": _int_list(),
        "features": _int_list(optional=True, allow_pool=True),
        "dropout": _float(0.0, 1.0, hi_open=True),
        "fe_dropout": _float(0.0, 1.0, hi_open=True),
    },
    "optimizer": {
        "name": _choice("integer_sgd"),
        "lr_inv": _int(1, 2**31 - 1),
        "amp": _int(1, 2**31 - 1, optional=True),
        "conv_amp_multiplier": _bool,
        "fwd_decay_inv": _int(1, 2**31 - 1, optional=True),
        "subnet_decay_inv": _int(1, 2**31 - 1, optional=True),
        "plateau": _optional_section({"factor": _int(1, 1 << 16), **_WATCH}),
        "early_stop": _optional_section(dict(_WATCH)),
    },
    "engine": {"backend": _choice("auto", "numpy", "cupy")},
    "compat": {
        "name": _str(),
        "int8_loss_error": _bool,
        "int32_accumulation": _bool,
        "head_pool_zero_padding": _bool,
        "cnn_linear_double_update": _bool,
    },
    "trainer": {
        "name": _choice("default", "paper"),
        "max_epochs": _int(1, 100_000),
        "batch_size": _int(1, 1 << 20),
        "val_fraction": _float(0.0, 1.0, hi_open=True),
        "monitor": _choice("val", "test"),
        "augment_per_batch": _bool,
        "drop_last": _bool,
        "test_drop_last": _bool,
        "eval_batch_size": _int(1, 1 << 20),
        "progress": _choice("auto", "rich", "plain", "none"),
        "limit_train_batches": _int(1, optional=True),
        "limit_test_batches": _int(1, optional=True),
    },
    "logger": _loggers,
}

# Keys added after runs were already written, with the value that means what the older nitro did: a run
# config without them (an older checkpoint, or .hydra/config.yaml) reads as if they held that value, and
# at that value they leave the experiment identity (`experiment_group`) as it was.
ADDED_KEYS: dict[tuple[str, str], Any] = {("trainer", "limit_train_batches"): None,
                                          ("trainer", "limit_test_batches"): None}
# The loggers of a run config without a `logger` section (written before it existed, or `logger=null`).
DEFAULT_LOGGERS: dict[str, Any] = {"csv": {}}


def with_added_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of a run config with every key of ADDED_KEYS it lacks set to its old meaning."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}
    for (section, key), value in ADDED_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section].setdefault(key, value)
    if out.get("logger") is None:
        out["logger"] = dict(DEFAULT_LOGGERS)
    return out


EVAL_SCHEMA: Schema = {
    "ckpt": _str(optional=True),
    "batch_size": _int(1, 1 << 20),
    "limit": _int(1, optional=True),
    "save_logits": _bool,
    "progress": _choice("auto", "rich", "plain", "none"),
    "engine": TRAIN_SCHEMA["engine"],
    "data": _optional_section(TRAIN_SCHEMA["data"]),  # type: ignore[arg-type]
}

EXPORT_SCHEMA: Schema = {
    "ckpt": _str(optional=True),
    "format": _choice("onnx", "c"),
    "out": _str(optional=True),
    "heads": _bool,
    "overwrite": _bool,
}


def _validate(cfg: Any, schema: Schema, where: str) -> dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise NitroError(f"{where or 'the config'} must be a mapping of keys, got {cfg!r}")
    unknown = sorted(set(cfg) - set(schema))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise NitroError(f"unknown config key {key}; valid keys{' of ' + where if where else ''}: "
                         f"{', '.join(schema)} (check the spelling of the override)")
    missing = [k for k in schema if k not in cfg]
    if missing:
        key = f"{where}.{missing[0]}" if where else missing[0]
        raise NitroError(f"config key {key} is missing; add it (e.g. +{key}=...) or use a shipped preset")
    out: dict[str, Any] = {}
    for key, rule in schema.items():
        full = f"{where}.{key}" if where else key
        out[key] = _validate(cfg[key], rule, full) if isinstance(rule, dict) else rule(cfg[key], full)
    return out


def validate_train_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A checked plain-dict copy of a training config; raises NitroError naming the first bad key."""
    out = _validate(with_added_keys(cfg) if isinstance(cfg, Mapping) else cfg, TRAIN_SCHEMA, "")
    t = out["trainer"]
    if t["monitor"] == "val" and t["val_fraction"] == 0:
        raise NitroError("trainer.monitor=val needs a validation split: set trainer.val_fraction > 0 "
                         "(e.g. 0.1) or trainer.monitor=test")
    if out["model"]["preset"].startswith("mlp") and out["model"]["fe_dropout"]:
        raise NitroError(f"model.fe_dropout is for VGG models; {out['model']['preset']} is an MLP (its "
                         "dropout between blocks is model.dropout)")
    if out["model"]["preset"].startswith("mlp") and out["model"]["features"]:
        raise NitroError(f"model.features is for VGG models; {out['model']['preset']} is an MLP "
                         "(set its widths with model.hidden=[...])")
    return out


def validate_eval_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A checked plain-dict copy of an evaluation config."""
    out = _validate({"data": None, **cfg}, EVAL_SCHEMA, "")  # data: only when another dataset is asked for
    if not out["ckpt"]:
        raise NitroError("nitro eval needs a checkpoint: nitro eval ckpt=<run dir>/checkpoints/best.npz")
    return out


def validate_export_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A checked plain-dict copy of an export config."""
    out = _validate(cfg, EXPORT_SCHEMA, "")
    if not out["ckpt"]:
        raise NitroError("nitro export needs a checkpoint: nitro export ckpt=<run dir>/checkpoints/best.npz "
                         "format=onnx|c")
    return out


# Keys that do not change what a run computes: left out of the experiment identity.
_NOT_IDENTITY = {("seed",), ("resume",), ("data", "root"), ("engine",), ("trainer", "progress"),
                 ("trainer", "eval_batch_size"), ("logger",)}


def hyperparameters(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A run config as dotted keys (`model.hidden`) with their values, as trackers show hyperparameters:
    the experiment and its seed, without the keys that only say where and how a session runs."""
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for k, v in node.items():
            if (*path, k) in _NOT_IDENTITY and (*path, k) != ("seed",):
                continue
            if isinstance(v, Mapping) and v:
                walk(v, (*path, k))
            else:
                out[".".join((*path, k))] = v

    walk(cfg, ())
    return out


def experiment_group(cfg: Mapping[str, Any]) -> str:
    """A short stable hash of everything that defines the experiment (not the seed, paths or display)."""

    def strip(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, Mapping):
            return {k: strip(v, (*path, k)) for k, v in sorted(node.items())
                    if (*path, k) not in _NOT_IDENTITY
                    and not ((*path, k) in ADDED_KEYS and v == ADDED_KEYS[(*path, k)])}
        return node

    blob = json.dumps(strip(cfg, ()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
