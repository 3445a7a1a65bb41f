"""`nitro export`: ONNX and C99 artifacts bit for bit equal to nitro's own evaluation, integer-only, and
refused cleanly on bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import nitro_cmd, nitro_env
from nitro_cli.data import load_dataset
from nitro_cli.engine import cpu_flags
from nitro_cli.export import (
    balanced_limbs,
    build_plan,
    export_checkpoint,
    load_for_export,
    render,
    write_folder,
)
from nitro_cli.export import verify as V
from nitro_cli.export.c_source import MODEL_SOURCES
from nitro_cli.export.onnx_graph import MAX_LIMB_FAN_IN
from nitro_cli.nn import Arithmetic, build_from_config
from nitro_cli.runner import load_checkpoint
from test_cli import clean_error

# A reduced VGG8B (same builder and stage kinds, small widths). The 96-channel block at 7x7 gets a head
# pool with padding (kernel 2x1, padding 1x0), as every full VGG8B head on 28x28 inputs has.
REDUCED_VGG = ["model=vgg8b", "model.features=[8,M,16,M,96,M]", "model.hidden=[32]"]
INTEGER_TYPES = {"INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64"}


def needs_onnx() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


def needs_cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine")
    return cc


def _train(tmp: Path, *overrides: str) -> Path:
    run_dir = tmp / "run"
    res = subprocess.run([*nitro_cmd(), "train", "engine=numpy", *overrides, f"hydra.run.dir={run_dir}"],
                         capture_output=True, text=True, env=nitro_env(), timeout=600, cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def mlp1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MLP1 (784-100-50-10, the quickstart model) trained for 5 epochs on the embedded MNIST subset."""
    return _train(tmp_path_factory.mktemp("mlp1"), "trainer.max_epochs=5")


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced VGG8B trained for one epoch on the embedded MNIST subset."""
    return _train(tmp_path_factory.mktemp("vgg"), *REDUCED_VGG, "trainer.max_epochs=1")


def _export(nitro, ckpt: Path, fmt: str, out: Path, *extra: str) -> dict:
    res = nitro("export", f"ckpt={ckpt}", f"format={fmt}", f"out={out}", *extra,
                f"hydra.run.dir={out.parent / ('hydra_' + out.name)}")
    assert res.returncode == 0, res.stderr
    assert f"to {out}" in res.stdout
    return json.loads((out / "model_card.json").read_text())


def _check_bit_exact(ckpt: Path, nitro, tmp_path: Path, n: int) -> dict[str, float]:
    """Export both formats with heads, run them on the first n test images, compare every logit."""
    ckpt_obj, model, normalizer = load_for_export(ckpt)
    raw = load_dataset(ckpt_obj.state["config"]["data"]["name"])
    x, y = raw.test_x[:n], raw.test_y[:n].astype(np.int64)
    ref, ref_heads = V.nitro_logits(model, normalizer, x)
    assert ref.dtype == np.int8 and len(np.unique(ref.argmax(1))) > 1  # a trained, non-degenerate model
    accuracy = {"nitro": float((ref.argmax(1) == y).mean())}

    needs_onnx()
    _export(nitro, ckpt, "onnx", tmp_path / "onnx", "heads=true")
    out = V.onnx_outputs(V.onnx_session(tmp_path / "onnx" / "model.onnx"), x)
    assert out["logits"].dtype == np.int8 and np.array_equal(out["logits"], ref)
    assert np.array_equal(out["prediction"], ref.argmax(1))
    for block, head in zip(model.blocks, ref_heads, strict=True):
        assert np.array_equal(out[f"head_{block.name}"], head), block.name
    accuracy["onnx"] = float((out["prediction"] == y).mean())

    needs_cc()
    _export(nitro, ckpt, "c", tmp_path / "c", "heads=true")
    V.compile_c(tmp_path / "c", tmp_path / "nitro_eval")  # the strict flags; any warning fails
    img, lbl = V.write_idx(x, y, tmp_path)
    labels, preds, logits, line = V.run_c_driver(tmp_path / "nitro_eval", [img, lbl])
    k = model.num_classes
    assert np.array_equal(labels, y) and np.array_equal(preds, ref.argmax(1))
    assert np.array_equal(logits[:, :k], ref)
    for i, head in enumerate(ref_heads):
        assert np.array_equal(logits[:, k * (i + 1):k * (i + 2)], head), model.blocks[i].name
    correct = int((preds == y).sum())
    hundredths = (correct * 10000 + n // 2) // n
    assert line == f"accuracy {correct}/{n} = {hundredths // 100}.{hundredths % 100:02d}%"
    accuracy["c"] = correct / n
    return accuracy


def test_onnx_runtime_integer_semantics_the_export_relies_on() -> None:
    """Div truncates toward zero (negative operands too); MatMulInteger (uint8 with zero point 128 x int8
    7-bit limbs, every product at its extreme), int32 and int64 MatMul and ReduceMax on uint8 are exact."""
    needs_onnx()
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from nitro_cli.engine import trunc_div

    def run(nodes, inputs, feeds, inits=(), out_type=None):
        out = h.make_tensor_value_info("y", out_type or inputs[0].type.tensor_type.elem_type, None)
        graph = h.make_graph(nodes, "g", inputs, [out], initializer=list(inits))
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
        import onnxruntime as ort

        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds)[0]

    for dt, np_dt in ((T.INT8, np.int8), (T.INT32, np.int32), (T.INT64, np.int64)):
        a = np.array([-7, 7, -9, -1, -127, 127, -128, 5], dtype=np_dt)
        b = np.array([2, -2, 4, 4, 4, 4, 3, -3], dtype=np_dt)
        got = run([h.make_node("Div", ["a", "b"], ["y"])],
                  [h.make_tensor_value_info("a", dt, [8]), h.make_tensor_value_info("b", dt, [8])],
                  {"a": a, "b": b})
        assert got.tolist() == trunc_div(a.astype(np.int64), b.astype(np.int64)).tolist()
    # The widest fan-in the exporter accepts, every term at an extreme and of one sign, and a mixed case.
    k = MAX_LIMB_FAN_IN
    for a_value, b_value in ((255, -64), (0, -64), (255, 63), (0, 63)):
        a = np.full((2, k), a_value, dtype=np.uint8)
        b = np.full((k, 3), b_value, dtype=np.int8)
        got = run([h.make_node("MatMulInteger", ["a", "b", "zp"], ["y"])],
                  [h.make_tensor_value_info("a", T.UINT8, [2, k])], {"a": a},
                  [nh.from_array(b, "b"), nh.from_array(np.array(128, np.uint8), "zp")], T.INT32)
        assert got.dtype == np.int32 and (got == (a_value - 128) * b_value * k).all()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(5, 999)).astype(np.uint8)
    b = rng.integers(-64, 64, size=(999, 7)).astype(np.int8)
    got = run([h.make_node("MatMulInteger", ["a", "b", "zp"], ["y"])],
              [h.make_tensor_value_info("a", T.UINT8, [5, 999])], {"a": a},
              [nh.from_array(b, "b"), nh.from_array(np.array(128, np.uint8), "zp")], T.INT32)
    assert np.array_equal(got, (a.astype(np.int64) - 128) @ b.astype(np.int64))
    for dt, np_dt, top in ((T.INT32, np.int32, 2**31 - 1), (T.INT64, np.int64, 2**62)):
        x = rng.integers(-(top // 4), top // 4, size=(4, 3, 3)).astype(np_dt)
        scale = np.array([[1], [2], [1]], dtype=np_dt)
        got = run([h.make_node("MatMul", ["x", "s"], ["y"])], [h.make_tensor_value_info("x", dt, [4, 3, 3])],
                  {"x": x}, [nh.from_array(scale, "s")])
        exact = np.einsum("nok,kj->noj", x.astype(object), scale.astype(object)).astype(np_dt)
        assert np.array_equal(got, exact)
    x = rng.integers(0, 256, size=(2, 4, 6, 3)).astype(np.uint8)
    got = run([h.make_node("ReduceMax", ["x"], ["y"], axes=[1, 2], keepdims=0)],
              [h.make_tensor_value_info("x", T.UINT8, [2, 4, 6, 3])], {"x": x})
    assert np.array_equal(got, x.max(axis=(1, 2)))


def test_balanced_limbs_are_exact_8_bit_and_as_few_as_possible() -> None:
    rng = np.random.default_rng(1)
    w = np.concatenate([rng.integers(-2**31, 2**31, size=5000), [-2**31, 2**31 - 1, 0, -1, 1, 127, -128]])
    limbs = balanced_limbs(w.astype(np.int32))
    assert len(limbs) == 5 and all(limb.dtype == np.int8 for limb in limbs)
    assert np.array_equal(sum(limb.astype(np.int64) * 256**i for i, limb in enumerate(limbs)), w)
    # The fewest limbs: k limbs hold [-128 (256^k - 1) / 255, 127 (256^k - 1) / 255].
    for value, k in [(0, 1), (127, 1), (-128, 1), (128, 2), (-129, 2), (32639, 2), (-32896, 2), (32640, 3),
                     (-32897, 3), (8355711, 3), (8355712, 4), (2139062143, 4), (2139062144, 5)]:
        assert len(balanced_limbs(np.array([value], dtype=np.int64))) == k, value
    # 7-bit limbs (the ONNX graph's): [-64, 63], k limbs hold [-64 (128^k - 1) / 127, 63 (128^k - 1) / 127].
    limbs = balanced_limbs(w.astype(np.int32), 7)
    assert min(int(limb.min()) for limb in limbs) == -64 and max(int(limb.max()) for limb in limbs) == 63
    assert np.array_equal(sum(limb.astype(np.int64) * 128**i for i, limb in enumerate(limbs)), w)
    for value, k in [(63, 1), (-64, 1), (64, 2), (-65, 2), (8127, 2), (-8256, 2), (8128, 3), (1040319, 3),
                     (1040320, 4)]:
        assert len(balanced_limbs(np.array([value], dtype=np.int64), 7)) == k, value


def test_mlp1_onnx_and_c_match_nitro_eval_bit_for_bit_on_all_2000_test_images(mlp1_run: Path, nitro,
                                                                               tmp_path: Path) -> None:
    ckpt = mlp1_run / "checkpoints" / "last.npz"
    accuracy = _check_bit_exact(ckpt, nitro, tmp_path, 2000)
    res = nitro("eval", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["n"] == 2000
    assert accuracy == {"nitro": report["test_accuracy"], "onnx": report["test_accuracy"],
                        "c": report["test_accuracy"]}


def test_reduced_vgg8b_onnx_and_c_match_nitro_bit_for_bit(vgg_run: Path, nitro, tmp_path: Path) -> None:
    accuracy = _check_bit_exact(vgg_run / "checkpoints" / "last.npz", nitro, tmp_path, 512)
    assert len(set(accuracy.values())) == 1


def test_compat_int32_wrap_and_zero_head_padding_are_reproduced(vgg_run: Path, tmp_path: Path) -> None:
    """compat=reference arithmetic at inference: int32 wrap-around of the sums (weights scaled up so that
    the sums do wrap) and head pools whose zero padding competes; ONNX and C match nitro bit for bit."""
    ckpt, _, normalizer = load_for_export(vgg_run / "checkpoints" / "last.npz")
    x = load_dataset("mnist_mini").test_x[:256]
    trained = dict(ckpt.section("param/"))
    scaled = dict(trained)
    for name in ("param/block3/weight", "param/block4/weight"):
        scaled[name] = (scaled[name].astype(np.int64) << 20).clip(-2**31, 2**31 - 1).astype(np.int32)

    def model_with(params: dict, **switches: bool):
        config = {**ckpt.state["model"], "compat": Arithmetic(**switches).to_config()}
        m = build_from_config(config, np.random.default_rng(0))
        m.load_state_dict(params)
        return m

    reference = dict(int8_loss_error=True, int32_accumulation=True, head_pool_zero_padding=True,
                     cnn_linear_double_update=True)
    model = model_with(scaled, **reference)
    ref, ref_heads = V.nitro_logits(model, normalizer, x)
    # Both behaviours matter here: the wrap changes the outputs, the zero padding block3's head.
    assert not np.array_equal(ref, V.nitro_logits(model_with(scaled), normalizer, x)[0])
    padded_head = V.nitro_logits(model_with(trained, head_pool_zero_padding=True), normalizer, x)[1][2]
    assert not np.array_equal(padded_head, V.nitro_logits(model_with(trained), normalizer, x)[1][2])
    plan = build_plan(model, normalizer.table(), heads=True)
    assert {p.name for p in plan.products() if p.needs_wrap} >= {"block3", "block4"}
    assert any(hd.pool is not None and hd.pool.pad_zero and hd.pool.ph for hd in plan.heads)

    needs_onnx()
    write_folder(tmp_path / "onnx", render(plan, "onnx"))
    out = V.onnx_outputs(V.onnx_session(tmp_path / "onnx" / "model.onnx"), x)
    assert np.array_equal(out["logits"], ref)
    for block, head in zip(model.blocks, ref_heads, strict=True):
        assert np.array_equal(out[f"head_{block.name}"], head), block.name

    needs_cc()
    write_folder(tmp_path / "c", render(plan, "c"))
    assert "nitro_wrap32(z)" in (tmp_path / "c" / "nitro_model.c").read_text()
    V.compile_c(tmp_path / "c", tmp_path / "nitro_eval")
    img, lbl = V.write_idx(x, np.zeros(len(x), dtype=np.uint8), tmp_path)
    _, _, logits, _ = V.run_c_driver(tmp_path / "nitro_eval", [img, lbl])
    k = model.num_classes
    assert np.array_equal(logits[:, :k], ref)
    for i, head in enumerate(ref_heads):
        assert np.array_equal(logits[:, k * (i + 1):k * (i + 2)], head), model.blocks[i].name


def test_onnx_limbs_stay_exact_on_a_kernel_that_saturates_int16_pairs(vgg_run: Path, monkeypatch) -> None:
    """The graph's 7-bit limbs give nitro's logits even where MatMulInteger adds pairs of products in
    saturating int16 first (AVX2's vpmaddubsw, as ONNX Runtime runs on a CPU without VNNI; here the ONNX
    reference evaluator with that kernel), and 8-bit limbs would not."""
    needs_onnx()
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    import nitro_cli.export.onnx_graph as graph
    from test_int8gemm import pairs_saturating

    class MatMulInteger(OpRun):
        def _run(self, a, b, a_zero_point=None, b_zero_point=None):  # noqa: ANN001, ANN202
            assert b_zero_point is None and a.dtype == np.uint8 and b.dtype == np.int8
            y = pairs_saturating(a.reshape(-1, a.shape[-1]), int(a_zero_point), b, 1)
            return (y.reshape(*a.shape[:-1], b.shape[1]),)

    _, model, normalizer = load_for_export(vgg_run / "checkpoints" / "last.npz")
    x = load_dataset("mnist_mini").test_x[:8]
    ref, ref_heads = V.nitro_logits(model, normalizer, x)
    plan = build_plan(model, normalizer.table(), heads=True)
    outputs = {}
    for bits in (7, 8):
        monkeypatch.setattr(graph, "DIGIT_BITS", bits)
        evaluator = ReferenceEvaluator(onnx.load_from_string(render(plan, "onnx")["model.onnx"]),
                                       new_ops=[MatMulInteger])
        outputs[bits] = evaluator.run(None, {"image": x})
    assert np.array_equal(outputs[7][0], ref)
    for block, head, got in zip(model.blocks, ref_heads, outputs[7][2:], strict=True):
        assert np.array_equal(got, head), block.name
    assert not np.array_equal(outputs[8][0], ref)  # the saturation is real: 8-bit limbs lose it


def non_integer_tensors(model) -> list[str]:
    """Every tensor of the graph (inputs, outputs, initializers, inferred intermediates, Cast targets,
    constant attributes) whose element type is not an integer type."""
    import onnx
    from onnx import TensorProto

    name = TensorProto.DataType.Name
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    bad = []
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if name(vi.type.tensor_type.elem_type) not in INTEGER_TYPES:
            bad.append(f"{vi.name}: {name(vi.type.tensor_type.elem_type)}")
    for init in graph.initializer:
        if name(init.data_type) not in INTEGER_TYPES:
            bad.append(f"initializer {init.name}: {name(init.data_type)}")
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and name(attr.i) not in INTEGER_TYPES:
                bad.append(f"{node.name} casts to {name(attr.i)}")
            if attr.type == onnx.AttributeProto.TENSOR and name(attr.t.data_type) not in INTEGER_TYPES:
                bad.append(f"{node.name}.{attr.name}: {name(attr.t.data_type)}")
            if attr.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
                bad.append(f"{node.name}.{attr.name}: float attribute")
    known = {vi.name for vi in [*graph.input, *graph.output, *graph.value_info]} | \
        {i.name for i in graph.initializer}
    bad += [f"{out}: type not inferred" for node in graph.node for out in node.output if out not in known]
    return bad


def test_onnx_graph_holds_integer_tensors_only(mlp1_run: Path, vgg_run: Path, nitro, tmp_path: Path) -> None:
    needs_onnx()
    import onnx
    from onnx import TensorProto, helper

    for run in (mlp1_run, vgg_run):
        out = tmp_path / run.parent.name
        card = _export(nitro, run / "checkpoints" / "last.npz", "onnx", out, "heads=true")
        model = onnx.load(str(out / "model.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        assert {n.domain for n in model.graph.node} == {""}
        assert non_integer_tensors(model) == []
        assert card["input"]["dtype"] == "uint8" and card["format"] == "onnx"
    # The walker does catch a float: a graph that casts the image to float.
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    bad = non_integer_tensors(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert any("FLOAT" in b for b in bad)


FLOAT_TYPES = re.compile(r"\b(float|double|_Complex|_Imaginary|math\.h|float\.h)\b")
# Floating literals (1.5, 2., 1e3, 0x1p3) and printf conversions of floating values (%f, %.2e, %g, %a).
FLOAT_LITERALS = re.compile(r"(?<![\w.])(\d+\.\d*|\.\d+|\d+[eE][+-]?\d+|0[xX][0-9a-fA-F.]*[pP][+-]?\d+)|"
                            r"%[-+ #0-9.]*[fFeEgGaA]")


STRING_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def float_in_c(text: str, data_strings: bool = False) -> str | None:
    """The first floating-point type or literal in C source (literals searched outside comments). With
    `data_strings` the string literals are left out: in nitro_weights.c they hold weight bytes, whose
    printable characters may read like '1.5'."""
    if data_strings:
        text = STRING_LITERAL.sub('""', text)
    m = FLOAT_TYPES.search(text)
    if m:
        return m.group(0)
    code = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    m = FLOAT_LITERALS.search(code)
    return m.group(0) if m else None


def test_c_export_has_no_floating_point_and_compiles_cleanly(vgg_run: Path, nitro, tmp_path: Path) -> None:
    cc = needs_cc()
    card = _export(nitro, vgg_run / "checkpoints" / "last.npz", "c", tmp_path / "c", "heads=true")
    files = sorted((tmp_path / "c").glob("*.[ch]"))
    assert [f.name for f in files] == ["main.c", "nitro_model.c", "nitro_model.h", "nitro_weights.c",
                                       "nitro_weights.h"]
    for f in files:
        text = f.read_text()
        data = f.name == "nitro_weights.c"
        assert float_in_c(text, data) is None, (f.name, float_in_c(text, data))
        assert not re.search(r"\b(malloc|calloc|realloc|free|alloca)\b", STRING_LITERAL.sub("", text)), f.name
    assert "#define NITRO_SCRATCH_BYTES" in (tmp_path / "c" / "nitro_model.h").read_text()
    assert card["build"].startswith("cc -std=c99")
    for opt in ("-O0", "-O2"):
        V.compile_c(tmp_path / "c", tmp_path / f"nitro_eval{opt}", opt=opt)  # fails on any warning
    if platform.machine() in ("x86_64", "AMD64"):
        # No floating-point register may be used at all: gcc refuses any float code under this flag.
        for name in MODEL_SOURCES:
            res = subprocess.run([cc, *V.STRICT_FLAGS, "-mgeneral-regs-only", "-c", "-o",
                                  str(tmp_path / "m.o"), str(tmp_path / "c" / name)], capture_output=True,
                                 text=True)
            assert res.returncode == 0 and not res.stderr, res.stderr
    # The check does see floating point.
    for snippet in ("double x;", "float y;", "y = 0.5;", "y = 1e3;", "y = .5;", 'printf("%.2f", y);'):
        assert float_in_c(snippet), snippet
    assert float_in_c("/* version 0.1.0 */ int y = 3;") is None
    assert float_in_c('const uint8_t w[1][8] = {"1.5e3"};', data_strings=True) is None


def _c_versions() -> list[list[str]]:
    """Build flags of every version of the layers this machine runs: the portable one, and with gcc on
    x86-64 each dispatch cap the CPU supports."""
    flags = [["-DNITRO_PORTABLE"]]
    if platform.machine() in ("x86_64", "AMD64"):
        cpu = cpu_flags()
        flags.append(["-DNITRO_ISA_MAX=0"])
        if "avx2" in cpu:
            flags.append(["-DNITRO_ISA_MAX=1"])
        if {"avx512_vnni", "avx512bw", "avx512vl"} <= cpu:  # /proc/cpuinfo spelling
            flags.append(["-DNITRO_ISA_MAX=2"])
    return flags


def test_every_c_version_and_build_gives_nitros_logits(vgg_run: Path, tmp_path: Path) -> None:
    """The layers' versions (portable; SSE2, AVX2, AVX-512 VNNI where the CPU has them), -O3 and -march=native
    builds: the same logits and head logits as nitro, on a reduced VGG8B whose tiles end in single pixels."""
    needs_cc()
    ckpt, model, normalizer = load_for_export(vgg_run / "checkpoints" / "last.npz")
    x = load_dataset("mnist_mini").test_x[:24]
    ref, ref_heads = V.nitro_logits(model, normalizer, x)
    expect = np.concatenate([ref, *ref_heads], axis=1)
    plan = build_plan(model, normalizer.table(), heads=True)
    write_folder(tmp_path / "c", render(plan, "c"))
    img, lbl = V.write_idx(x, np.zeros(len(x), dtype=np.uint8), tmp_path)
    builds = [("-O2", f) for f in _c_versions()] + [("-O3", []), ("-O0", [])]
    if platform.machine() in ("x86_64", "AMD64"):
        builds.append(("-O2", ["-march=native"]))
    for opt, flags in builds:
        V.compile_c(tmp_path / "c", tmp_path / "nitro_eval", opt=opt, extra_flags=flags)
        logits = V.run_c_driver(tmp_path / "nitro_eval", [img, lbl])[2]
        assert np.array_equal(logits, expect), (opt, flags)


DOT_LOOP = re.compile(r"for \(i = 0; i < \d+; \+\+i\) \{ .*\+= x0\[i\]")


def test_c_dot_products_vectorize_at_O2(vgg_run: Path, mlp1_run: Path, tmp_path: Path) -> None:
    """GCC reports every dot-product loop of every version vectorized at -O2 (-fopt-info-vec), so no change
    to the generated loops silently falls back to scalar code."""
    cc = needs_cc()
    macros = subprocess.run([cc, "-dM", "-E", "-x", "c", os.devnull], capture_output=True, text=True).stdout
    if "__GNUC__" not in macros or "__clang__" in macros:
        pytest.skip(f"{cc} is not gcc (-fopt-info-vec is gcc's)")
    for run in (vgg_run, mlp1_run):
        ckpt, model, normalizer = load_for_export(run / "checkpoints" / "last.npz")
        out = tmp_path / run.parent.name
        write_folder(out, render(build_plan(model, normalizer.table(), heads=True), "c"))
        source = (out / "nitro_model.c").read_text().splitlines()
        loops = {n + 1 for n, line in enumerate(source) if DOT_LOOP.search(line)}
        assert loops
        res = subprocess.run([cc, *V.STRICT_FLAGS, "-O2", "-fopt-info-vec-optimized", "-c", "-o",
                              str(tmp_path / "m.o"), str(out / "nitro_model.c")], capture_output=True,
                             text=True)
        vectorized = {int(m.group(1)) for m in re.finditer(r"nitro_model\.c:(\d+):\d+: optimized: loop "
                                                           r"vectorized", res.stderr)}
        assert loops <= vectorized, sorted(loops - vectorized)


def test_weight_literals_hold_every_byte(tmp_path: Path) -> None:
    """The string literals of nitro_weights.c give back every byte, whatever follows an escape (digits
    after a short octal escape, '?' pairs that would be trigraphs, quotes, backslashes, zeros)."""
    cc = needs_cc()
    from nitro_cli.export.c_source import _literal

    rng = np.random.default_rng(0)
    tricky = [0, 1, 0x30, 0x37, 0x38, 7, 0x3F, 0x3F, 0x3D, 0x22, 0x5C, 0xFF, 0o12, 0x34, 0x39, 0]
    data = bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tolist() + tricky * 20 +
                 rng.choice([0, 1, 2, 0x30, 0x31, 0x37, 0x38, 0xFE, 0xFF], 3000).tolist())
    src = tmp_path / "lit.c"
    src.write_text(f"#include <stdio.h>\nstatic const unsigned char d[{len(data) + 1}] = {{\n"
                   f"{_literal(data)}\n}};\n"
                   "int main(void) { return fwrite(d, 1, sizeof d, stdout) != sizeof d; }\n")
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-Wno-overlength-strings", "-o",
                    str(tmp_path / "lit"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "lit")], capture_output=True, check=True).stdout
    assert out == data + b"\0"


FLOAT_HELPERS = re.compile(r"__aeabi_(f|d|cf|cd)\w*|__aeabi_\w*2[fd]\b|__\w+[sdt]f[23]\b|__(fix|float)\w+")


def _mcu_compiler() -> tuple[list[str], str]:
    """The command that builds the model's objects for a 32-bit target without an FPU, and its nm."""
    if shutil.which("arm-none-eabi-gcc"):
        return ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"], "arm-none-eabi-nm"
    cc = needs_cc()
    host = [cc, "-m32", "-ffreestanding", "-mgeneral-regs-only"]  # freestanding: gcc's own <stdint.h>
    probe = subprocess.run([*host, "-x", "c", "-c", "-o", os.devnull, "-"],
                           input="#include <stdint.h>\nint32_t x;\n", capture_output=True, text=True)
    if probe.returncode == 0:
        return host, "nm"
    pytest.skip("no 32-bit cross compiler: neither arm-none-eabi-gcc (scripts/mcu-toolchain.sh or make "
                "mcu-toolchain installs Debian's gcc-arm-none-eabi) nor a host cc that builds -m32")


def test_mlp1_c_export_fits_a_microcontroller(mlp1_run: Path, tmp_path: Path) -> None:
    """The model card states the flash (weights) and RAM (scratch) an MLP1 export needs: within 256 KiB and
    32 KiB. Its model sources (not the file-reading driver) build for a Cortex-M4 without an FPU
    (-mfloat-abi=soft; or -m32 -ffreestanding -mgeneral-regs-only on the host) with no floating-point helper,
    and the objects' const data and RAM agree with the card."""
    card = export_checkpoint(mlp1_run / "checkpoints" / "last.npz", "c", tmp_path / "c").card
    memory = card["memory"]
    assert 0 < memory["flash_weight_bytes"] <= 256 * 1024 and 0 < memory["ram_scratch_bytes"] <= 32 * 1024
    header = (tmp_path / "c" / "nitro_model.h").read_text()
    assert f"#define NITRO_SCRATCH_BYTES {memory['ram_scratch_bytes']}\n" in header
    assert f"#define NITRO_WEIGHT_BYTES {memory['flash_weight_bytes']}\n" in header
    command, nm = _mcu_compiler()
    objects = []
    for name in MODEL_SOURCES:
        obj = tmp_path / (name[:-2] + ".o")
        res = subprocess.run([*command, *V.STRICT_FLAGS, "-O2", "-c", "-o", str(obj),
                              str(tmp_path / "c" / name)], capture_output=True, text=True)
        assert res.returncode == 0 and not res.stderr, res.stderr
        objects.append(obj)
    symbols = subprocess.run([nm, *map(str, objects)], capture_output=True, text=True, check=True).stdout
    assert not FLOAT_HELPERS.search(symbols), FLOAT_HELPERS.search(symbols)
    sizes = {}
    for line in subprocess.run([nm, "-S", "--size-sort", str(objects[1])], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        _, size, kind, name = line.split()
        sizes[name] = (int(size, 16), kind)
    assert all(kind in "rR" for _, kind in sizes.values())  # const data only
    assert sum(size for size, _ in sizes.values()) == memory["flash_weight_bytes"]
    # Only nitro_predict's static scratch takes RAM in the model's objects.
    listing = subprocess.run([nm, "-S", str(objects[0])], capture_output=True, text=True, check=True).stdout
    fields = [line.split() for line in listing.splitlines()]
    ram = [(int(f[1], 16), f[3]) for f in fields if len(f) == 4 and f[2] in "bBdD"]
    assert [size for size, _ in ram] == [memory["ram_scratch_bytes"]], ram


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))


@pytest.fixture(scope="module")
def damaged(mlp1_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    tmp = tmp_path_factory.mktemp("bad")
    data = (mlp1_run / "checkpoints" / "last.npz").read_bytes()
    (tmp / "truncated.npz").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x10
    (tmp / "flipped.npz").write_bytes(bytes(flipped))
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    return {"truncated": (tmp / "truncated.npz", "not a usable nitro checkpoint"),
            "flipped": (tmp / "flipped.npz", "not a usable nitro checkpoint"),
            "text": (tmp / "notes.txt", "not an .npz archive"),
            "missing": (tmp / "nope.npz", "does not exist")}


@pytest.mark.parametrize("kind", ["truncated", "flipped", "text", "missing"])
def test_bad_checkpoints_end_in_one_error_line_and_write_nothing(kind: str, damaged, nitro,
                                                                 tmp_path: Path) -> None:
    path, needle = damaged[kind]
    out = tmp_path / "exports" / "model"
    clean_error(nitro("export", f"ckpt={path}", "format=c", f"out={out}", f"hydra.run.dir={tmp_path / 'h'}"),
                needle)
    assert not (tmp_path / "exports").exists()


def test_user_errors_of_export_end_in_one_error_line(mlp1_run: Path, nitro, tmp_path: Path) -> None:
    ckpt = mlp1_run / "checkpoints" / "last.npz"
    hydra_dir = f"hydra.run.dir={tmp_path / 'h'}"
    clean_error(nitro("export", f"ckpt={ckpt}", "format=tflite", f"out={tmp_path / 'x'}", hydra_dir),
                "format must be one of onnx, c")
    clean_error(nitro("export", "format=c", hydra_dir), "needs a checkpoint")
    clean_error(nitro("export", f"ckpt={ckpt}", "formt=c", hydra_dir), "formt")
    # An output folder that cannot be written: under a file, and under a read-only file system.
    (tmp_path / "afile").write_text("x")
    clean_error(nitro("export", f"ckpt={ckpt}", "format=c", f"out={tmp_path / 'afile' / 'sub'}", hydra_dir),
                "cannot write the export", "Not a directory")
    clean_error(nitro("export", f"ckpt={ckpt}", "format=c", "out=/proc/nitro_export", hydra_dir),
                "cannot write the export")
    assert not Path("/proc/nitro_export").exists()
    # A folder of the user's is never replaced, not even with overwrite=true (tests/test_export_safety.py
    # covers every kind of folder); an earlier export is, with overwrite=true, once the new one is complete.
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for extra in ([], ["overwrite=true"]):
        clean_error(nitro("export", f"ckpt={ckpt}", "format=c", f"out={out}", *extra, hydra_dir),
                    "already exists", "nitro export does not write (keep.txt)")
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []
    out = tmp_path / "earlier"
    _export(nitro, ckpt, "onnx" if importlib.util.find_spec("onnx") else "c", out)
    clean_error(nitro("export", f"ckpt={ckpt}", "format=c", f"out={out}", hydra_dir),
                "already holds an export", "overwrite=true")
    card = _export(nitro, ckpt, "c", out, "overwrite=true")
    assert {*card["files"], "model_card.json"} == {p.name for p in out.iterdir()}
    assert _leftovers(tmp_path) == []


def test_write_folder_leaves_nothing_behind_when_a_write_fails(tmp_path: Path, monkeypatch) -> None:
    import nitro_cli.export as export

    calls = []

    def boom(fd: int) -> None:
        calls.append(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.os, "fsync", boom)
    from nitro_cli.errors import NitroError

    with pytest.raises(NitroError, match="No space left"):
        write_folder(tmp_path / "a" / "b" / "out", {"x.c": b"int x;\n"})
    assert calls and list(tmp_path.iterdir()) == []


def test_model_card_and_default_output_folder(mlp1_run: Path, nitro, tmp_path: Path) -> None:
    ckpt = mlp1_run / "checkpoints" / "last.npz"
    res = nitro("export", f"ckpt={ckpt}", "format=c", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "run" / "c"
    card = json.loads((out / "model_card.json").read_text())
    summary = json.loads((mlp1_run / "summary.json").read_text())
    assert card["dataset"] == "mnist_mini" and card["preset"] == "mlp1" and card["epoch"] == 5
    assert card["test_accuracy"] == summary["test_accuracy"]
    assert card["input"]["dtype"] == "uint8" and card["input"]["shape"] == [1, 28, 28]
    assert card["parameters"] == 784 * 100 + 100 * 50 + 50 * 10
    assert card["compat"]["int32_accumulation"] is False
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", card["exported_by"]["commit"])
    assert card["checkpoint"]["sha256"] == __import__("hashlib").sha256(ckpt.read_bytes()).hexdigest()
    sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.name != "model_card.json"}
    assert {k: v for k, v in card["files"].items() if k != "model_card.json"} == sizes
    assert all(layer["accumulator"] in ("int32_t", "int64_t") for layer in card["layers"])
    assert load_checkpoint(ckpt).state["epoch"] == 5


def test_export_is_listed_in_the_help(nitro) -> None:
    res = nitro("--help")
    assert res.returncode == 0 and "export" in res.stdout
    res = nitro("export", "--help")
    assert res.returncode == 0 and "format" in res.stdout and "heads" in res.stdout
    env = {**nitro_env(), "COMP_LINE": "nitro export fo", "COMP_POINT": "15"}
    res = subprocess.run([*nitro_cmd(), "-sc", "query=bash"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0 and "format=" in res.stdout.split()


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_export_bench_script_reports_identical_logits(mlp1_run: Path, tmp_path: Path) -> None:
    needs_onnx()
    needs_cc()
    ckpt = mlp1_run / "checkpoints/last.npz"
    res = subprocess.run([sys.executable, str(SCRIPTS / "export_bench.py"), str(ckpt), "--n", "300",
                          "--repeats", "1", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, env=nitro_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"].split(" (")[0] for r in rows] == ["nitro eval", "ONNX Runtime", "C driver", "C driver",
                                                        "C driver"]
    assert all(r["identical_logits"] == 300 and r["images_per_s"] > 0 for r in rows)
    assert len({r["accuracy"] for r in rows}) == 1
    c = rows[2]
    assert c["binary_bytes"] > 0 and c["compile_s"] > 0 and c["memory"]["flash_weight_bytes"] > 0
    saved = json.loads((tmp_path / "out" / "export_bench.json").read_text())
    assert len(saved["rows"]) == 5 and saved["machine"]["cpu"]
    assert "| C driver (cc -O2) |" in (tmp_path / "out" / "export_bench.md").read_text()


@pytest.mark.slow
def test_every_preset_exports_bit_exact() -> None:
    """MLP1..MLP4, VGG8B (MNIST and CIFAR-10 shapes) and VGG11B at full width: both exports, compiled and
    run, equal nitro's logits (minutes: the C compiler reads up to ~100 MB of weight arrays)."""
    needs_onnx()
    needs_cc()
    res = subprocess.run([sys.executable, str(SCRIPTS / "export_sizes.py"), "--images", "2", "--scale",
                          "256"], capture_output=True, text=True, env=nitro_env(), timeout=3600)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 7 and all(r["onnx_identical"] and r["c_identical"] for r in rows)
