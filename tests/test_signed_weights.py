"""uint8 weights stored as int8 (agent/recognizer/signed_weights.py): a real ONNX Runtime session on the
rewritten file answers bit for bit what the original does, on a dynamically quantized MatMul written as the
public int8 exports write it (weights in raw_data, scalar zero points in int32_data)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from agent.recognizer import ort_cache  # noqa: E402
from agent.recognizer.signed_weights import write_signed  # noqa: E402


def quantized_matmul(path, *, shared_zero_point_elsewhere=False, layers=2):
    """x [N, 16] -> `layers` dynamically quantized MatMuls (uint8 weights, zero points 119 and 137) -> y."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  helper.make_tensor(f"wzp{i}", TensorProto.UINT8, [], [119 + 18 * i]),  # int32_data, as exported
                  numpy_helper.from_array(np.array(0.01, np.float32), f"ws{i}")]
        nodes += [helper.make_node("DynamicQuantizeLinear", [x], [f"q{i}", f"qs{i}", f"qzp{i}"]),
                  helper.make_node("MatMulInteger", [f"q{i}", f"w{i}", f"qzp{i}", f"wzp{i}"], [f"acc{i}"]),
                  helper.make_node("Cast", [f"acc{i}"], [f"accf{i}"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"accf{i}", f"qs{i}"], [f"m{i}"]),
                  helper.make_node("Mul", [f"m{i}", f"ws{i}"], [f"y{i}"])]
        x = f"y{i}"
    if shared_zero_point_elsewhere:  # the weight's zero point also read by another kind of node
        nodes.append(helper.make_node("DequantizeLinear", ["w0", "ws0", "wzp0"], ["w0f"]))
        outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 16]),
                   helper.make_tensor_value_info("w0f", TensorProto.FLOAT, [16, 16])]
    else:
        outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 16])]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_signed_weights_answer_bit_for_bit_what_the_unsigned_do(tmp_path):
    original = quantized_matmul(tmp_path / "model.int8.onnx")
    signed = tmp_path / "signed.onnx"
    assert write_signed(original, signed) == 4  # two weights and their two zero points
    model = onnx.load(str(signed))
    onnx.checker.check_model(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types == {"w0": TensorProto.INT8, "wzp0": TensorProto.INT8, "ws0": TensorProto.FLOAT,
                     "w1": TensorProto.INT8, "wzp1": TensorProto.INT8, "ws1": TensorProto.FLOAT}
    w0 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w0")).astype(np.int16)
    before = numpy_helper.to_array(next(t for t in onnx.load(str(original)).graph.initializer if t.name == "w0"))
    assert np.array_equal(w0, before.astype(np.int16) - 128)
    assert int(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wzp1"))) == 137 - 128
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32) * 3
    assert np.array_equal(run(signed, x)[0], run(original, x)[0])


def test_a_weight_read_by_another_kind_of_node_stays_unsigned(tmp_path):
    shared = quantized_matmul(tmp_path / "shared.onnx", shared_zero_point_elsewhere=True)
    out = tmp_path / "out.onnx"
    assert write_signed(shared, out) == 2  # the second layer's weight and zero point only
    types = {t.name: t.data_type for t in onnx.load(str(out)).graph.initializer}
    assert (types["w0"], types["wzp0"], types["w1"], types["wzp1"]) == (TensorProto.UINT8, TensorProto.UINT8,
                                                                        TensorProto.INT8, TensorProto.INT8)
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    assert all(np.array_equal(a, b) for a, b in zip(run(out, x), run(shared, x)))


def test_a_model_without_quantized_matmuls_is_not_copied(tmp_path):
    plain, out = tmp_path / "plain.onnx", tmp_path / "out.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "p",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph), str(plain))
    assert write_signed(plain, out) == 0 and not out.exists()


@pytest.mark.skipif(not ort_cache.signed_kernels_exact(), reason="signed weights are for x86-64 with VNNI")
def test_model_optimize_stores_int8_weights_signed_and_answers_the_same(tmp_path):
    original = quantized_matmul(tmp_path / "model.int8.onnx")
    done = ort_cache.build(original, str(tmp_path / "cache"))
    assert done["signed_tensors"] == 4 and not list((tmp_path / "cache").glob(".*"))  # no temporary left
    copy = done["optimized"]
    x = np.random.default_rng(2).standard_normal((7, 16)).astype(np.float32)
    assert np.array_equal(run(copy, x)[0], run(original, x)[0])


def test_signed_kernels_are_used_only_where_they_are_exact(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(ort_cache.platform, "machine", lambda: "x86_64")
    for flags, exact in (("fpu sse avx2 avx512f avx512bw", False), ("fpu avx2 avx512_vnni", True),
                         ("fpu avx2 avx_vnni", True)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="ascii")
        assert ort_cache.signed_kernels_exact(str(info)) is exact, flags
    monkeypatch.setattr(ort_cache.platform, "machine", lambda: "aarch64")
    assert ort_cache.signed_kernels_exact(str(info)) is False
    assert ort_cache.signed_kernels_exact(str(tmp_path / "none")) is False
