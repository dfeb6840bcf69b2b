"""Kokoro's ConvInteger nodes as im2col + MatMulInteger, against ConvInteger itself: exact integer
maths in onnx's reference evaluator everywhere, and onnxruntime's kernels where prepare() would
use the rewrite."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
rt = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from mkd_jax.corpus import kokoro_gemm  # noqa: E402

# (kernel, dilation, stride, pads): the 13 kinds Kokoro-82M int8 holds, then asymmetric padding.
CASES = [(3, 1, 1, (1, 1)), (7, 1, 1, (3, 3)), (11, 1, 1, (5, 5)), (1, 1, 1, (0, 0)),
         (5, 1, 1, (2, 2)), (7, 3, 1, (9, 9)), (11, 3, 1, (15, 15)), (7, 5, 1, (15, 15)),
         (11, 5, 1, (25, 25)), (3, 1, 2, (1, 1)), (3, 3, 1, (3, 3)), (3, 5, 1, (5, 5)),
         (12, 1, 6, (3, 3)), (5, 2, 3, (0, 4)), (4, 1, 2, (3, 0))]  # fmt: skip


def _conv_model(k, d, s, pads, c_in=6, c_out=5, seed=0, weights=None, w_zp=None, **conv):
    """x (float) -> DynamicQuantizeLinear -> ConvInteger -> int32 y, as quantize_dynamic writes."""
    rng = np.random.default_rng(seed)
    if weights is None:
        weights = rng.integers(0, 256, (c_out, c_in // conv.get("group", 1), k), dtype=np.uint8)
    if w_zp is None:
        w_zp = np.array(rng.integers(0, 256), np.uint8)
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(w_zp, "w_zp")]
    attrs = dict(kernel_shape=[k], dilations=[d], strides=[s], pads=list(pads), **conv)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"]),
        helper.make_node("ConvInteger", ["xq", "w", "xzp", "w_zp"], ["y"], name="conv", **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c_in, None])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _set_init(model, name, value):
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value, name))


def _ort(model, x):
    opts = rt.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = rt.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _ref(model, x):
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def _inputs(k, d, pads):
    rng = np.random.default_rng(1)
    span = d * (k - 1) + 1 - sum(pads)  # the shortest input with an output
    for n, t in ((1, 40), (2, 41), (1, 57), (1, max(span, 1))):
        yield (rng.standard_normal((n, 6, t)) * 3).astype(np.float32)


@pytest.mark.parametrize("k,d,s,pads", CASES)
def test_rewrite_equals_convinteger(k, d, s, pads):
    model = _conv_model(k, d, s, pads, seed=k * 100 + d * 10 + s)
    fast, count = kokoro_gemm.rewrite(model)
    assert count == 1 and not [n for n in fast.graph.node if n.op_type == "ConvInteger"]
    exact_here = kokoro_gemm.exact_kernels() is None
    for x in _inputs(k, d, pads):  # batch 1 and 2, lengths that do and do not divide by s
        want = _ref(model, x)
        got = _ref(fast, x)  # the graph's arithmetic, on any CPU
        assert got.dtype == np.int32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if exact_here:  # onnxruntime's kernels, where prepare() would use them
            np.testing.assert_array_equal(_ort(fast, x), _ort(model, x))
            np.testing.assert_array_equal(_ort(model, x), want)


def test_rewrite_at_the_extremes():
    """Weights at 0 and 255 around a zero point of 0 and activations at 0 and 255: the products
    where a 16-bit pair sum would saturate are exact."""
    w = np.tile(np.array([0, 255], np.uint8), (4, 8, 2))[:, :, :3]
    model = _conv_model(3, 1, 1, (1, 1), c_in=8, c_out=4, weights=w, w_zp=np.array(0, np.uint8))
    x = np.tile(np.array([-1.0, 1.0], np.float32), (1, 8, 16))  # quantises to 0 and 255
    fast = kokoro_gemm.rewrite(model)[0]
    np.testing.assert_array_equal(_ref(fast, x), _ref(model, x))
    if kokoro_gemm.exact_kernels() is None:
        np.testing.assert_array_equal(_ort(fast, x), _ort(model, x))


def test_rewrite_refuses_what_it_does_not_cover():
    def refused(model, match):
        with pytest.raises(ValueError, match=f"'conv'.*{match}"):
            kokoro_gemm.rewrite(model)

    refused(_conv_model(3, 1, 1, (1, 1), group=2), "1-D ungrouped")
    refused(_conv_model(3, 1, 1, (0, 0), auto_pad="SAME_UPPER"), "auto_pad")
    int8_weights = _conv_model(3, 1, 1, (1, 1))
    _set_init(int8_weights, "w", np.zeros((5, 6, 3), np.int8))
    refused(int8_weights, "uint8")
    per_channel = _conv_model(3, 1, 1, (1, 1))
    _set_init(per_channel, "w_zp", np.zeros(5, np.uint8))
    refused(per_channel, "one uint8 scalar")
    no_zero_point = _conv_model(3, 1, 1, (1, 1))
    del no_zero_point.graph.node[1].input[3]
    refused(no_zero_point, "zero points must be given")
    not_quantised = _conv_model(3, 1, 1, (1, 1))
    not_quantised.graph.node[0].output[0] = "other"  # the conv reads something else
    refused(not_quantised, "DynamicQuantizeLinear")


def test_exact_kernels_reads_the_cpu(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(kokoro_gemm, "CPUINFO", info)
    monkeypatch.setattr(kokoro_gemm.platform, "machine", lambda: "x86_64")
    assert "no " in kokoro_gemm.exact_kernels()  # no file to read
    info.write_text("flags\t: fpu avx2 avx512f avx512bw\n")
    assert kokoro_gemm.exact_kernels() == "this x86 CPU has no VNNI"
    info.write_text("flags\t: fpu avx2 avx512_vnnix\n")  # a longer flag is not VNNI
    assert kokoro_gemm.exact_kernels() == "this x86 CPU has no VNNI"
    for flag in ("avx512_vnni", "avx_vnni"):
        info.write_text(f"flags\t: fpu avx2 {flag} sse4_2\n")
        assert kokoro_gemm.exact_kernels() is None
    monkeypatch.setattr(kokoro_gemm.platform, "machine", lambda: "aarch64")
    assert kokoro_gemm.exact_kernels() is None
    monkeypatch.setattr(kokoro_gemm.platform, "machine", lambda: "riscv64")
    assert "untested" in kokoro_gemm.exact_kernels()


def test_prepare_uses_the_rewrite_only_when_the_probe_matches(tmp_path, monkeypatch, capsys):
    model = tmp_path / "kokoro-v1.0.int8.onnx"
    onnx.save(_conv_model(3, 1, 1, (1, 1)), str(model))
    monkeypatch.setattr(kokoro_gemm, "exact_kernels", lambda: None)
    fast_name = "kokoro-v1.0.int8" + kokoro_gemm.SUFFIX
    probes = {model.name: [np.zeros(3)], fast_name: [np.zeros(3)]}

    def probe(path, voices):
        if isinstance(probes[path.name], Exception):
            raise probes[path.name]
        return probes[path.name]

    monkeypatch.setattr(kokoro_gemm, "_probe", probe)
    fast = kokoro_gemm.prepare(model, tmp_path / "voices.npz")
    assert fast.name == fast_name and fast.is_file()
    assert "integer GEMMs" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp"))

    probes[fast_name] = [np.ones(3)]  # the rewritten model speaks differently here
    assert kokoro_gemm.prepare(model, tmp_path / "voices.npz") == model
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "original ConvInteger model" in err[0] and "differs" in err[0]
    assert not fast.exists()  # removed, so the next build makes it again

    probes[fast_name] = RuntimeError("onnxruntime cannot load it\n  at node 7\n  ...")
    assert kokoro_gemm.prepare(model, tmp_path / "voices.npz") == model
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "kokoro: original ConvInteger model (the rewrite failed: RuntimeError: onnxruntime "
        "cannot load it)"
    ]
    assert not fast.exists()

    monkeypatch.setattr(kokoro_gemm, "exact_kernels", lambda: "this x86 CPU has no VNNI")
    assert kokoro_gemm.prepare(model, tmp_path / "voices.npz") == model
    assert "no VNNI" in capsys.readouterr().err

    grouped = tmp_path / "other" / model.name  # a model the rewrite does not cover
    grouped.parent.mkdir()
    onnx.save(_conv_model(3, 1, 1, (1, 1), group=2), str(grouped))
    monkeypatch.setattr(kokoro_gemm, "exact_kernels", lambda: None)
    assert kokoro_gemm.prepare(grouped, tmp_path / "voices.npz") == grouped
    assert "rewrite refused" in capsys.readouterr().err
