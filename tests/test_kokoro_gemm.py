"""Kokoro's ConvInteger nodes as im2col + MatMulInteger, against onnxruntime's own ConvInteger."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
rt = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mkd_jax.corpus import kokoro_gemm  # noqa: E402

# (kernel, dilation, stride, pads): every kind Kokoro-82M int8 holds, and asymmetric padding.
CASES = [(3, 1, 1, (1, 1)), (11, 5, 1, (25, 25)), (1, 1, 1, (0, 0)), (3, 1, 2, (1, 1)),
         (12, 1, 6, (3, 3)), (7, 3, 1, (9, 9)), (5, 2, 3, (0, 4))]  # fmt: skip


def _conv_model(k, d, s, pads, c_in=6, c_out=5, seed=0, weights=None, group=1):
    """x (float) -> DynamicQuantizeLinear -> ConvInteger -> int32 y, as quantize_dynamic writes."""
    rng = np.random.default_rng(seed)
    if weights is None:
        weights = rng.integers(0, 256, (c_out, c_in // group, k), dtype=np.uint8)
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.array(rng.integers(0, 256), np.uint8), "w_zp"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"]),
        helper.make_node(
            "ConvInteger", ["xq", "w", "xzp", "w_zp"], ["y"], name="conv", kernel_shape=[k],
            dilations=[d], strides=[s], pads=list(pads), group=group,
        ),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, None])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(model, x):
    opts = rt.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = rt.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("k,d,s,pads", CASES)
def test_rewrite_equals_convinteger(k, d, s, pads):
    why = kokoro_gemm.exact_kernels()
    if why is not None:
        pytest.skip(f"uint8 x int8 kernels not exact here ({why}); prepare() keeps the original")
    model = _conv_model(k, d, s, pads, seed=k * 100 + d * 10 + s)
    fast, count = kokoro_gemm.rewrite(model)
    assert count == 1 and not [n for n in fast.graph.node if n.op_type == "ConvInteger"]
    rng = np.random.default_rng(1)
    for t in (40, 41, 57):  # lengths that do and do not divide by the stride
        x = (rng.standard_normal((1, 6, t)) * 3).astype(np.float32)
        want, got = _run(model, x), _run(fast, x)
        assert got.dtype == np.int32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_rewrite_at_the_extremes():
    """Weights at 0 and 255 around a zero point of 0 and activations at 0 and 255: the products
    where a 16-bit pair sum would saturate are exact."""
    if (why := kokoro_gemm.exact_kernels()) is not None:
        pytest.skip(f"uint8 x int8 kernels not exact here ({why})")
    w = np.tile(np.array([0, 255], np.uint8), (4, 8, 3))[:, :8, :3]
    model = _conv_model(3, 1, 1, (1, 1), c_in=8, c_out=4, weights=w)
    for init in model.graph.initializer:
        if init.name == "w_zp":
            init.CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), "w_zp"))
    x = np.tile(np.array([-1.0, 1.0], np.float32), (1, 8, 16))  # quantises to 0 and 255
    np.testing.assert_array_equal(_run(kokoro_gemm.rewrite(model)[0], x), _run(model, x))


def test_rewrite_refuses_what_it_does_not_cover():
    with pytest.raises(ValueError, match="'conv'.*1-D ungrouped"):
        kokoro_gemm.rewrite(_conv_model(3, 1, 1, (1, 1), group=2))
    model = _conv_model(3, 1, 1, (1, 1))
    for init in model.graph.initializer:
        if init.name == "w":
            w = numpy_helper.to_array(init).astype(np.int8)
            init.CopyFrom(numpy_helper.from_array(w, "w"))
    with pytest.raises(ValueError, match="'conv'.*uint8"):
        kokoro_gemm.rewrite(model)


def test_prepare_uses_the_rewrite_only_when_the_probe_matches(tmp_path, monkeypatch, capsys):
    model = tmp_path / "kokoro-v1.0.int8.onnx"
    onnx.save(_conv_model(3, 1, 1, (1, 1)), str(model))
    monkeypatch.setattr(kokoro_gemm, "exact_kernels", lambda: None)
    probes = {model.name: [np.zeros(3)], model.name.replace(".onnx", kokoro_gemm.SUFFIX): None}

    def probe(path, voices):
        return probes[path.name] or [np.zeros(3)]

    monkeypatch.setattr(kokoro_gemm, "_probe", probe)
    fast = kokoro_gemm.prepare(model, tmp_path / "voices.npz")
    assert fast.name == "kokoro-v1.0.int8" + kokoro_gemm.SUFFIX and fast.is_file()
    assert "integer GEMMs" in capsys.readouterr().err

    probes[fast.name] = [np.ones(3)]  # the rewritten model speaks differently here
    assert kokoro_gemm.prepare(model, tmp_path / "voices.npz") == model
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "original ConvInteger model" in err[0] and "differs" in err[0]

    monkeypatch.setattr(kokoro_gemm, "exact_kernels", lambda: "this x86 CPU has no VNNI")
    assert kokoro_gemm.prepare(model, tmp_path / "voices.npz") == model
    assert "no VNNI" in capsys.readouterr().err

    grouped = tmp_path / "other" / model.name  # a model the rewrite does not cover
    grouped.parent.mkdir()
    onnx.save(_conv_model(3, 1, 1, (1, 1), group=2), str(grouped))
    monkeypatch.setattr(kokoro_gemm, "exact_kernels", lambda: None)
    probes[grouped.name] = [np.zeros(3)]
    assert kokoro_gemm.prepare(grouped, tmp_path / "voices.npz") == grouped
    assert "rewrite refused" in capsys.readouterr().err
