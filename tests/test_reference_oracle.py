"""compat=reference against data recorded from the reference code itself (../shared/fixtures/reference).

Each fixture is replayed from its recorded initial weights, batches and dropout masks; the weights after
every recorded step and every recorded intermediate of step 1 must come out bit for bit. Each switch is then
shown to matter on the fixture that isolates it: turning it off (or the conv multiplier on) breaks the match.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import reference_fixtures as rf
from nitro_cli.nn import EXACT, Arithmetic

pytestmark = pytest.mark.skipif(not rf.FIXTURES.is_dir(),
                                reason=f"reference fixtures not found at {rf.FIXTURES} (../shared beside the "
                                       "project root)")

ALL = ["vgg_small_mnist", "vgg_small_mnist_dropout", "mlp_dropout_mnist", "mlp_plain_mnist", "wrap_cases"]


@pytest.fixture(scope="module")
def fixtures() -> dict[str, dict[str, np.ndarray]]:
    return {name: rf.load(name) for name in ALL}


@pytest.mark.parametrize("name", ALL)
def test_reference_mode_reproduces_every_recorded_step_and_intermediate(name: str, fixtures) -> None:
    fx = fixtures[name]
    trace: dict[str, np.ndarray] = {}
    snapshots = rf.replay(fx, rf.REFERENCE, trace=trace)
    assert sorted(snapshots) == rf.snapshot_steps(fx) and len(snapshots) >= 2
    assert rf.mismatches(fx, snapshots) == []
    recorded = sorted(k[4:] for k in fx if k.startswith("s1__"))
    assert recorded and set(recorded) <= set(trace)
    for key in recorded:
        expected = fx[f"s1__{key}"]
        assert trace[key].shape == expected.shape and np.array_equal(trace[key], expected), key


@pytest.mark.parametrize("name", ["mlp_plain_mnist", "mlp_dropout_mnist"])
def test_exact_mode_matches_where_no_reference_behaviour_occurs(name: str, fixtures) -> None:
    """MLPs without wraps have no head pools and no double update: the default mode is the reference."""
    fx = fixtures[name]
    assert rf.mismatches(fx, rf.replay(fx, EXACT)) == []


def _differs(fx: dict[str, np.ndarray], arith: Arithmetic, conv_amp_multiplier: bool = False) -> set[str]:
    return {m.split(":")[1] for m in rf.mismatches(fx, rf.replay(fx, arith, conv_amp_multiplier))}


def test_the_cnn_fixture_needs_zero_padding_and_double_update_and_no_conv_multiplier(fixtures) -> None:
    fx = fixtures["vgg_small_mnist"]
    # No wrap-around happens in this fixture, so the two CNN switches alone reproduce it.
    cnn_only = Arithmetic(head_pool_zero_padding=True, cnn_linear_double_update=True)
    assert _differs(fx, cnn_only) == set()
    no_padding = _differs(fx, replace(cnn_only, head_pool_zero_padding=False))
    assert {"block1", "block1_head", "block6_head"} <= no_padding  # every conv head pool is padded
    assert {"block7", "block7_head"} <= _differs(fx, replace(cnn_only, cnn_linear_double_update=False))
    assert {"block1", "block6"} <= _differs(fx, cnn_only, conv_amp_multiplier=True)
    assert "block7" in _differs(fx, EXACT)


def test_the_dropout_cnn_fixture_needs_the_double_update_of_the_linear_block(fixtures) -> None:
    fx = fixtures["vgg_small_mnist_dropout"]
    differs = _differs(fx, replace(rf.REFERENCE, cnn_linear_double_update=False))
    assert {"block7", "block7_head", "output"} <= differs and "block1" not in differs


def test_wrap_cases_need_both_wrap_switches_and_nothing_else(fixtures) -> None:
    fx = fixtures["wrap_cases"]
    both = Arithmetic(int8_loss_error=True, int32_accumulation=True)
    assert _differs(fx, both) == set()
    assert _differs(fx, Arithmetic(int8_loss_error=True))  # int32 sums wrapped too
    assert _differs(fx, Arithmetic(int32_accumulation=True))  # int8 loss errors wrapped too
    assert _differs(fx, EXACT) == {"block1", "block1_head", "output"}


def test_exact_mode_refuses_to_wrap_where_the_reference_wrapped(fixtures) -> None:
    """The wrap cases' int8 loss errors are exact in the default mode (wider than int8)."""
    fx = fixtures["wrap_cases"]
    trace: dict[str, np.ndarray] = {}
    rf.replay(fx, EXACT, trace=trace)
    assert trace["output__err"].dtype == np.int64 and np.abs(trace["output__err"]).max() > 127
