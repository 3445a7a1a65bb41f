"""NITRO-D layers, blocks and models against plain int64 / Python references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nitro_cli.engine import IntegerOverflowError
from nitro_cli.errors import NitroError
from nitro_cli.nn import (
    EXACT,
    MODEL_PRESETS,
    RELU_MEAN_CORRECTION,
    Arithmetic,
    Dropout,
    IntegerConv2d,
    IntegerLinear,
    LayerInputError,
    PoolGeometry,
    build_model,
    dropout,
    dropout_mask,
    dropout_scale,
    head_pool_geometry,
    kaiming_bound,
    maxpool2d,
    maxpool2d_backward,
    maxpool2d_gather,
    nitro_relu,
    nitro_relu_backward,
    scaling,
)
from nitro_cli.optim import EarlyStopping, IntegerSGD, PlateauSchedule
from test_engine import ref_conv2d, ref_conv2d_weight_grad, ref_trunc_div


def tdiv(a: int, b: int) -> int:
    return ref_trunc_div(int(a), int(b))


int8s = hnp.arrays(np.int8, st.integers(1, 300), elements=st.integers(-128, 127))


@given(hnp.arrays(np.int64, st.integers(1, 200), elements=st.integers(-(2**45), 2**45)),
       st.integers(1, 5000))
def test_scaling_matches_reference(x, fan_in):
    expected = [max(-127, min(127, tdiv(v, 256 * fan_in))) for v in x.tolist()]
    out = scaling(x, fan_in)
    assert out.dtype == np.int8 and out.tolist() == expected


@given(int8s, st.sampled_from(sorted(RELU_MEAN_CORRECTION)))
def test_nitro_relu_forward_matches_reference(x, slope):
    corr = RELU_MEAN_CORRECTION[slope]
    expected = [max(0, min(127, v)) + tdiv(max(-127, min(0, v)), slope) - corr for v in x.tolist()]
    out = nitro_relu(x, slope)
    assert out.dtype == np.int8 and out.tolist() == expected


def test_nitro_relu_range_and_constants():
    x = np.arange(-128, 128, dtype=np.int16).astype(np.int8)
    out = nitro_relu(x, 4)
    # The spec's formula truncates: trunc(-127 / 4) - 36 = -67 (its "[-68, 91]" would need floor division).
    assert out.min() == -67 and out.max() == 91
    assert RELU_MEAN_CORRECTION == {3: 31, 4: 36, 5: 38, 7: 40, 8: 42, 10: 43, 15: 44, 16: 44, 20: 45}
    with pytest.raises(ValueError, match="slope"):
        nitro_relu(x, 6)


@given(int8s, st.data(), st.sampled_from([4, 10]))
def test_nitro_relu_backward_matches_reference(x, data, slope):
    delta = data.draw(hnp.arrays(np.int64, x.shape, elements=st.integers(-(2**40), 2**40)))
    expected = []
    for v, d in zip(x.tolist(), delta.tolist(), strict=True):
        g = 1 if 0 <= v < 127 else slope if -127 <= v < 0 else 0
        expected.append(tdiv(d, g) if g else 0)
    assert nitro_relu_backward(x, delta, slope).tolist() == expected


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2)


def ref_maxpool(x: np.ndarray, g: PoolGeometry):
    n, c, h, w = x.shape
    oh, ow = g.out_size(h, w)
    out = np.zeros((n, c, oh, ow), dtype=np.int64)
    arg = {}
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = None
                    for di in range(g.kh):
                        for dj in range(g.kw):
                            r, s = i * g.kh + di - g.ph, j * g.kw + dj - g.pw
                            if 0 <= r < h and 0 <= s < w and (best is None or x[a, b, r, s] > best[0]):
                                best = (x[a, b, r, s], r, s)
                    out[a, b, i, j] = best[0]
                    arg[(a, b, i, j)] = best[1:]
    return out, arg


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(2, 9), st.integers(2, 9),
       st.sampled_from([(2, 2, 0, 0), (8, 4, 4, 0), (4, 2, 2, 1), (2, 1, 1, 0), (2, 2, 1, 1)]),
       st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_maxpool_forward_backward_match_reference(n, c, h, w, geom, seed, ties, relu_range):
    g = PoolGeometry(*geom)
    rng = np.random.default_rng(seed)
    hi = 3 if ties else 128  # few distinct values: many ties, the first maximum must win
    # NITRO-ReLU's outputs never reach -128, so int8 padding (-128) is below every datum; inputs may hold it.
    lo = -127 if relu_range else -128
    x = rng.integers(lo, hi, size=(n, c, h, w)).astype(np.int8)
    oh, ow = g.out_size(h, w)
    if oh < 1 or ow < 1 or g.ph * 2 > g.kh or g.pw * 2 > g.kw:
        return
    expected, arg = ref_maxpool(x, g)  # the reference works on [N, C, H, W]; the layers are channels last
    out, index = maxpool2d(nhwc(x), g)
    assert out.dtype == np.int8 and out.tolist() == nhwc(expected).tolist()
    delta = rng.integers(-(2**30), 2**30, size=expected.shape)
    back = nchw(maxpool2d_backward(nhwc(delta), index, g, (h, w)))
    ref_back = np.zeros((n, c, h, w), dtype=np.int64)
    for (a, b, i, j), (r, s) in arg.items():
        ref_back[a, b, r, s] += delta[a, b, i, j]
    assert back.tolist() == ref_back.tolist()
    z = rng.integers(-(2**40), 2**40, size=x.shape)  # any map of the input's shape, read at the first maxima
    ref_gather = np.zeros(expected.shape, dtype=np.int64)
    for (a, b, i, j), (r, s) in arg.items():
        ref_gather[a, b, i, j] = z[a, b, r, s]
    assert nchw(maxpool2d_gather(nhwc(z), index, g)).tolist() == ref_gather.tolist()
    assert maxpool2d_gather(nhwc(x), index, g).tolist() == out.tolist()


@pytest.mark.parametrize("lowest", [-128, -127])  # padded in a wider type, or with int8's -128
def test_maxpool_padding_never_wins_on_all_negative_input(lowest):
    x = np.full((1, 28, 28, 1), lowest, dtype=np.int8)
    out, index = maxpool2d(x, PoolGeometry(8, 4, 4, 0))
    assert out.shape == (1, 4, 7, 1) and out.dtype == np.int8 and (out == lowest).all()
    assert (index[:, 0] == 4 * 4).all()  # top windows: the first real row (i = 4) wins, not the padding


def test_maxpool_with_indices_refuses_64_bit_maps():
    """Its keys (value * window size + position) are only proven to fit for values of at most 32 bits."""
    x = np.zeros((1, 4, 4, 1), dtype=np.int64)
    with pytest.raises(TypeError, match="at most 32 bits"):
        maxpool2d(x, PoolGeometry(2, 2))
    assert maxpool2d(x, PoolGeometry(2, 2), with_index=False)[0].shape == (1, 2, 2, 1)


def test_linear_forward_and_weight_grad_match_reference():
    rng = np.random.default_rng(1)
    layer = IntegerLinear("fc", 37, 11, rng)
    layer.weight = rng.integers(-(2**31), 2**31, size=(11, 37)).astype(np.int32)
    x = rng.integers(-128, 128, size=(9, 37)).astype(np.int8)
    assert layer.forward(x).tolist() == (x.astype(object) @ layer.weight.T.astype(object)).tolist()
    delta = rng.integers(-(2**40), 2**40, size=(9, 11))
    assert layer.weight_grad(x, delta).tolist() == (delta.T.astype(object) @ x.astype(object)).tolist()
    small = delta >> 12  # keeps 11 * |delta| * |W| below 2^63
    assert layer.input_error(small).tolist() == (small.astype(object) @ layer.weight.astype(object)).tolist()
    with pytest.raises(IntegerOverflowError):
        layer.input_error(delta)


def test_conv_layer_matches_reference():
    rng = np.random.default_rng(2)
    layer = IntegerConv2d("conv", 3, 5, rng)
    x = rng.integers(-128, 128, size=(2, 3, 6, 6)).astype(np.int8)
    assert nchw(layer.forward(nhwc(x))).tolist() == ref_conv2d(x, layer.weight).tolist()
    expected = scaling(ref_conv2d(x, layer.weight).astype(np.int64), layer.fan_in)
    assert nchw(layer.forward_scaled(nhwc(x))).tolist() == expected.tolist()
    delta = rng.integers(-(2**30), 2**30, size=(2, 5, 6, 6))
    assert layer.weight_grad(nhwc(x), nhwc(delta)).tolist() == ref_conv2d_weight_grad(x, delta).tolist()


def test_layers_refuse_wrong_dtype_and_shape():
    rng = np.random.default_rng(0)
    fc, conv = IntegerLinear("fc1", 4, 2, rng), IntegerConv2d("conv1", 3, 2, rng)
    with pytest.raises(LayerInputError, match="fc1: expected an integer array"):
        fc.forward(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(LayerInputError, match=r"fc1: expected input of shape \[N, 4\]"):
        fc.forward(np.zeros((2, 5), dtype=np.int8))
    with pytest.raises(LayerInputError, match="conv1"):
        conv.forward(np.zeros((2, 4, 4, 1), dtype=np.int8))
    model = build_model("mlp1", (1, 28, 28), 10, seed_rng=rng)
    with pytest.raises(LayerInputError, match="network expects images"):
        model.predict(np.zeros((2, 1, 32, 32), dtype=np.int8))


@given(hnp.arrays(np.int64, st.integers(1, 100), elements=st.integers(-(2**40), 2**40)),
       st.sampled_from([0.1, 0.15, 0.5]), st.integers(0, 2**32 - 1))
def test_dropout_matches_reference(x, p, seed):
    r = dropout_scale(p)
    mask = dropout_mask(x.shape, p, np.random.default_rng(seed))
    expected = [tdiv(v * m * r, 1000) for v, m in zip(x.tolist(), mask.tolist(), strict=True)]
    assert dropout(x, mask, r).tolist() == expected


def test_dropout_scale_constants():
    assert dropout_scale(0.1) == 1111 and dropout_scale(0.15) == 1176 and dropout_scale(0.2) == 1250
    with pytest.raises(ValueError):
        dropout_scale(1.0)


def test_loss_error_is_computed_wide_unless_int8_is_asked_for():
    y_hat = np.array([[-127, 127]], dtype=np.int8)
    y = np.array([[32, 0]], dtype=np.int8)
    assert EXACT.loss_error(y_hat, y).tolist() == [[-159, 127]]
    assert Arithmetic(int8_loss_error=True).loss_error(y_hat, y).tolist() == [[97, 127]]


def test_the_reference_arithmetic_counts_each_entry_it_wraps():
    arith = Arithmetic(int8_loss_error=True, int32_accumulation=True)
    y_hat = np.array([[-127, 127, 100], [-100, 0, 127]], dtype=np.int8)
    y = np.array([[32, 0, -32], [32, 0, -1]], dtype=np.int8)
    arith.loss_error(y_hat, y)  # -159 and 132 wrap; -132 wraps; 128 wraps
    layer = IntegerLinear("block1", 3, 2, np.random.default_rng(0))
    layer.weight[:] = [[2**30, 2**30, 0], [1, 1, 1]]
    delta = np.array([[2, 0], [1, 1]], dtype=np.int8)
    arith.input_error(layer, delta)  # sums 2^31 (wraps), 2^31 (wraps), 0, 2^30+1, 2^30+1, 1
    assert arith.wraps.take() == (4, 2) and arith.wraps.take() == (0, 0)
    exact = Arithmetic()
    exact.loss_error(y_hat, y)
    assert exact.wraps.take() == (0, 0) and not exact.counts_wraps and arith.counts_wraps


def test_head_pool_geometry_follows_the_spec_examples():
    assert head_pool_geometry(128, 32, 32) == PoolGeometry(8, 4, 0, 0)
    g = head_pool_geometry(128, 28, 28)
    assert g == PoolGeometry(8, 4, 4, 0) and 128 * np.prod(g.out_size(28, 28)) == 3584
    assert head_pool_geometry(64, 4, 4) == PoolGeometry(1, 1, 0, 0)


def test_kaiming_bound():
    assert kaiming_bound(784) == (1372 * 128 * 1732) // (28 * 10**6) == 10
    assert kaiming_bound(9) == 64 and kaiming_bound(27) == 60


def test_integer_sgd_update_matches_reference():
    rng = np.random.default_rng(5)
    layer = IntegerLinear("block1", 6, 3, rng)
    layer.role, layer.amp_factor = "block", 7
    w0 = layer.weight.copy()
    grad = rng.integers(-(2**35), 2**35, size=w0.shape)
    # The conv-block multiplier (amp_factor 7 here) applies only when opted in.
    for multiplier, amp in ((False, 64 * 10), (True, 64 * 10 * 7)):
        layer.weight = w0.copy()
        opt = IntegerSGD(lr_inv=512, fwd_decay_inv=3, subnet_decay_inv=5, conv_amp_multiplier=multiplier)
        opt.step(layer, grad, num_classes=10)
        expected = [[w - (tdiv(g, 512 * amp) + tdiv(w, 3)) for w, g in zip(wr, gr, strict=True)]
                    for wr, gr in zip(w0.tolist(), grad.tolist(), strict=True)]
        assert layer.weight.dtype == np.int32 and layer.weight.tolist() == expected
    head = IntegerLinear("block1_head", 6, 3, rng)
    head.role, head.amp_factor = "head", 1
    h0 = head.weight.copy()
    opt.step(head, grad, num_classes=10)
    assert head.weight.tolist() == [[w - (tdiv(g, 512) + tdiv(w, 5)) for w, g in zip(wr, gr, strict=True)]
                                    for wr, gr in zip(h0.tolist(), grad.tolist(), strict=True)]


def test_weight_update_overflow_raises_naming_the_layer():
    layer = IntegerLinear("block3", 2, 2, np.random.default_rng(0))
    layer.role, layer.amp_factor = "block", 1
    layer.weight[:] = 2**31 - 10
    with pytest.raises(IntegerOverflowError, match="block3"):
        IntegerSGD(lr_inv=1, amp=1).step(layer, np.full((2, 2), -(2**20)), num_classes=10)


def _flat_after(epoch: int, n: int) -> list[float]:
    """A test curve that gains 2 points an epoch up to `epoch`, then stays within half a point."""
    return [min(e, epoch) * 0.02 + (0.004 if e % 2 else 0.0) for e in range(1, n + 1)]


def test_paper_watchers_ignore_the_epochs_before_their_start():
    # Stops gaining a point at epoch 6. Watchers that remembered epochs 1-9 would cut lr_inv at 6 + 15 = 21
    # and stop at 6 + 35 = 41; the reference's first see epoch 10 (plateau) and 30 (early stop).
    accs = _flat_after(6, 80)
    opt = IntegerSGD(lr_inv=512)
    plateau, early = PlateauSchedule(), EarlyStopping()
    cuts = [e for e, a in enumerate(accs, start=1) if plateau.step(e, a, opt)]
    stops = [e for e, a in enumerate(accs, start=1) if early.step(e, a)]
    assert cuts == [25, 40, 55, 70] and opt.lr_inv == 512 * 3**4
    assert stops[0] == 65 and early.stopped_after(65)


def test_watcher_counts_below_best_plus_delta_as_stale_from_zero():
    opt = IntegerSGD(lr_inv=512)
    plateau = PlateauSchedule(factor=3, patience=2, start_epoch=2, min_delta=0.01)
    # epoch 1 unseen; epoch 2: 0.005 < 0 + 0.01 is stale; 3: 0.5 becomes best; 4, 5 stale -> cut at 5
    accs = [0.9, 0.005, 0.5, 0.509, 0.5, 0.52, 0.52, 0.52]
    fired = [plateau.step(e, a, opt) for e, a in enumerate(accs, start=1)]
    assert fired == [False, False, False, False, True, False, False, True] and opt.lr_inv == 512 * 9
    assert plateau.best == 0.52


@pytest.mark.parametrize("split", [5, 12, 40, 60])
def test_watchers_resume_anywhere_as_if_never_interrupted(split):
    # 5: inside both ignored windows; 12: plateau waiting, early stop still blind; 40, 60: both waiting
    accs = _flat_after(6, 70)
    whole_opt, whole_p, whole_e = IntegerSGD(lr_inv=512), PlateauSchedule(), EarlyStopping()
    whole = [(whole_p.step(e, a, whole_opt), whole_e.step(e, a)) for e, a in enumerate(accs, start=1)]
    opt, plateau, early = IntegerSGD(lr_inv=512), PlateauSchedule(), EarlyStopping()
    first = [(plateau.step(e, a, opt), early.step(e, a)) for e, a in enumerate(accs[:split], start=1)]
    opt2, plateau2, early2 = IntegerSGD(lr_inv=opt.lr_inv), PlateauSchedule(), EarlyStopping()
    plateau2.load_state_dict(plateau.state_dict(), split)
    early2.load_state_dict(early.state_dict(), split)
    rest = [(plateau2.step(e, a, opt2), early2.step(e, a))
            for e, a in enumerate(accs[split:], start=split + 1)]
    assert first + rest == whole and opt2.lr_inv == whole_opt.lr_inv


def test_watcher_state_from_before_the_correction_loads_only_while_unseen():
    old = {"reference": 0.5, "stale": 3}
    plateau = PlateauSchedule()
    plateau.load_state_dict(old, 5)  # the corrected watcher has seen nothing before epoch 10
    assert (plateau.best, plateau.stale) == (0.0, 0)
    with pytest.raises(ValueError, match="before spec section 5's correction"):
        EarlyStopping().load_state_dict(old, 30)


def test_unknown_preset_and_widths_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(NitroError, match="unknown model preset 'nope'"):
        build_model("nope", (1, 28, 28), 10, seed_rng=rng)
    with pytest.raises(NitroError, match="hidden widths"):
        build_model("mlp1", (1, 28, 28), 10, hidden=[0], seed_rng=rng)
    with pytest.raises(NitroError, match="too small"):
        build_model("vgg8b", (1, 8, 8), 10, seed_rng=rng)


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_presets_build_with_the_papers_shapes(preset):
    shape = (3, 32, 32) if preset in ("mlp4", "vgg8b", "vgg11b") else (1, 28, 28)
    model = build_model(preset, shape, 10, seed_rng=np.random.default_rng(0))
    widths = {"mlp1": [100, 50], "mlp2": [200, 100, 50], "mlp3": [1024] * 3, "mlp4": [3000] * 3}
    if preset in widths:
        assert [b.layer.out_features for b in model.blocks] == widths[preset]
        assert model.blocks[0].layer.in_features == int(np.prod(shape))
    else:
        convs = [b.layer.out_channels for b in model.blocks if isinstance(b.layer, IntegerConv2d)]
        assert convs == ([128, 256, 256, 512, 512, 512] if preset == "vgg8b"
                         else [128, 128, 128, 256, 256, 512, 512, 512, 512])
        assert model.blocks[-1].layer.in_features == 2048 and model.blocks[-1].layer.out_features == 1024
        assert model.blocks[0].layer.amp_factor == 32  # 32^2 // (8 * 4)
    for layer in model.layers():
        assert layer.weight.dtype == np.int32
        assert np.abs(layer.weight).max() <= kaiming_bound(layer.fan_in)
    assert model.output.out_features == 10


def _stage_names(model):
    return [getattr(s, "name", type(s).__name__) + (f"({s.p})" if isinstance(s, Dropout) else "")
            for s in model.stages]


def test_vgg_dropout_sits_between_blocks_as_spec_section_3_places_it():
    # Classifier dropout only: once before the last pool, and after the linear block.
    model = build_model("vgg8b", (1, 28, 28), 10, dropout=0.1, seed_rng=np.random.default_rng(0))
    assert _stage_names(model) == ["block1", "block2", "FeaturePool", "block3", "block4", "FeaturePool",
                                   "block5", "FeaturePool", "block6", "after_block6(0.1)", "FeaturePool",
                                   "Flatten", "block7", "after_block7(0.1)"]
    # Feature-extractor dropout: after every conv block (before a following pool), none extra.
    model = build_model("vgg8b", (1, 28, 28), 10, dropout=0.1, fe_dropout=0.2, features=[8, 8, "M"],
                        seed_rng=np.random.default_rng(0))
    assert _stage_names(model) == ["block1", "after_block1(0.2)", "block2", "after_block2(0.2)",
                                   "FeaturePool", "Flatten", "block3", "after_block3(0.1)"]
    with pytest.raises(NitroError, match="fe_dropout"):
        build_model("mlp1", (1, 28, 28), 10, fe_dropout=0.1, seed_rng=np.random.default_rng(0))


def test_state_dict_round_trip_and_mismatch():
    a = build_model("mlp1", (1, 28, 28), 10, seed_rng=np.random.default_rng(0))
    b = build_model("mlp1", (1, 28, 28), 10, seed_rng=np.random.default_rng(1))
    assert set(a.state_dict()) == {f"param/{n}/weight" for n in
                                   ["block1", "block1_head", "block2", "block2_head", "output"]}
    b.load_state_dict(a.state_dict())
    assert all((a.state_dict()[k] == v).all() for k, v in b.state_dict().items())
    other = build_model("mlp2", (1, 28, 28), 10, seed_rng=np.random.default_rng(0))
    with pytest.raises(NitroError, match="do not match"):
        other.load_state_dict(a.state_dict())


def test_dropout_mask_keeps_about_one_minus_p():
    mask = dropout_mask((200_000,), 0.15, np.random.default_rng(0))
    assert mask.dtype == np.int8 and set(np.unique(mask)) == {0, 1}
    assert abs(mask.mean() - 0.85) < 0.005


# --- A whole NITRO-D step, written out independently with Python ints, against the model's step. ---

def _ref_scale(v, fan_in):
    return np.vectorize(lambda t: max(-127, min(127, tdiv(t, 256 * fan_in))), otypes=[object])(v)


def _ref_relu(v):
    def one(t):
        return max(0, min(127, t)) + tdiv(max(-127, min(0, t)), 4) - 36
    return np.vectorize(one, otypes=[object])(v)


def _ref_relu_back(pre, d):
    def one(x, e):
        g = 1 if 0 <= x < 127 else 4 if -127 <= x < 0 else 0
        return tdiv(e, g) if g else 0
    return np.vectorize(one, otypes=[object])(pre, d)


def _ref_update(w, grad, lr_inv, amp, decay_inv):
    def one(a, g):
        return a - (tdiv(g, lr_inv * amp) + tdiv(a, decay_inv))
    return np.vectorize(one, otypes=[object])(w, grad)


def _ref_local(out, y, head_w, pool):
    """Head forward and backward of one block: returns (head grad, error into the block output)."""
    if pool is not None:
        pooled, arg = ref_maxpool(out.astype(np.int64), pool)
        flat = nhwc(pooled).reshape(len(out), -1).astype(object)  # heads flatten channels last
    else:
        flat = out.reshape(len(out), -1)
    z = _ref_scale(flat @ head_w.T, flat.shape[1])
    delta = z - y
    grad = delta.T @ flat
    err = delta @ head_w
    if pool is not None:
        back = np.zeros(out.shape, dtype=object)
        err = nchw(err.reshape(nhwc(pooled).shape))
        for (a, b, i, j), (r, s) in arg.items():
            back[a, b, r, s] += err[a, b, i, j]
        err = back
    return grad, err.reshape(out.shape)


def _ref_dropout(v, mask, r):
    return np.vectorize(lambda t, m: tdiv(t * m * r, 1000), otypes=[object])(v, mask)


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_a_whole_training_step_matches_an_independent_reference(p):
    rng = np.random.default_rng(11)
    model = build_model("vgg8b", (2, 6, 6), 3, hidden=[5], features=[4, "M"], decoder_dim=16, dropout=p,
                        seed_rng=np.random.default_rng(3))
    conv, lin = model.blocks
    assert conv.pool == PoolGeometry(4, 4, 2, 2) and conv.layer.amp_factor == 2  # padded head pool
    w = {layer.name: layer.weight.astype(object) for layer in model.layers()}
    x = rng.integers(-128, 128, size=(4, 2, 6, 6)).astype(np.int8)
    labels = rng.integers(0, 3, size=4)
    y = (np.eye(3, dtype=np.int8) * 32)[labels]
    opt = IntegerSGD(lr_inv=2, fwd_decay_inv=7, subnet_decay_inv=5)
    mask_rng = np.random.default_rng(99)
    model.train_step(x, y, labels, opt, np.random.default_rng(99))

    r = dropout_scale(p) if p else 1000
    mask1 = nchw(dropout_mask((4, 6, 6, 4), p, mask_rng)) if p else np.ones((4, 4, 6, 6), np.int8)
    mask2 = dropout_mask((4, 5), p, mask_rng) if p else np.ones((4, 5), np.int8)
    yo = y.astype(object)
    # Each head learns from its block's output before dropout; the next stage receives the dropped-out one.
    pre1 = _ref_scale(ref_conv2d(x, w["block1"]), 18)
    act1 = _ref_relu(pre1)
    g_head1, err1 = _ref_local(act1, yo, w["block1_head"], conv.pool)
    g_conv = ref_conv2d_weight_grad(x, _ref_relu_back(pre1, err1))
    dropped1 = _ref_dropout(act1, mask1, r)
    h = nhwc(ref_maxpool(dropped1.astype(np.int64), PoolGeometry(2, 2))[0]).reshape(4, -1).astype(object)
    pre2 = _ref_scale(h @ w["block2"].T, 36)
    act2 = _ref_relu(pre2)
    g_head2, err2 = _ref_local(act2, yo, w["block2_head"], None)
    g_lin = _ref_relu_back(pre2, err2).T @ h
    out2 = _ref_dropout(act2, mask2, r)
    y_hat = _ref_scale(out2 @ w["output"].T, 5)
    g_out = (y_hat - yo).T @ out2
    expected = {  # amp 64 * classes for conv and linear blocks alike (no conv multiplier by default)
        "block1": _ref_update(w["block1"], g_conv, 2, 64 * 3, 7),
        "block1_head": _ref_update(w["block1_head"], g_head1, 2, 1, 5),
        "block2": _ref_update(w["block2"], g_lin, 2, 64 * 3, 7),
        "block2_head": _ref_update(w["block2_head"], g_head2, 2, 1, 5),
        "output": _ref_update(w["output"], g_out, 2, 1, 5),
    }
    assert all(expected[name].tolist() != w[name].tolist() for name in w)  # every layer learned
    for layer in model.layers():
        assert layer.weight.tolist() == expected[layer.name].tolist(), layer.name


def test_nitro_relu_accepts_wide_inputs_without_wrapping():
    x = np.array([-(2**40), -70000, -129, -128, 0, 126, 127, 128, 65663, 2**40], dtype=np.int64)
    narrow = np.clip(x, -128, 127).astype(np.int8)  # what the values mean to the layer
    assert nitro_relu(x).tolist() == nitro_relu(narrow).tolist()
    delta = np.arange(1, 11, dtype=np.int64) * 1000
    assert nitro_relu_backward(x, delta).tolist() == nitro_relu_backward(narrow, delta).tolist()
