"""Kokoro int8 with its convolutions as integer GEMMs: the same int32 sums, about 1.5x the speed.

Kokoro-82M int8 quantises each Conv1d dynamically: uint8 activations times uint8 weights in a
`ConvInteger` node. onnxruntime runs uint8 x uint8 `ConvInteger` on a generic path, which took 72%
of the model's time (BUILD_NOTES). `rewrite` turns each one into im2col inside the graph and one
`MatMulInteger`:
- Transpose the activations to [N, T, C];
- Pad time with the input's zero point, so padding stays a real zero, as in `ConvInteger`;
- take one strided Slice per kernel tap and Concat them to [N, T_out, k C];
- MatMulInteger against the weights laid out as [k C, C_out] and shifted to int8 (w - 128, with
  zero point zp - 128, so w - zp is unchanged);
- Transpose back.

onnxruntime runs uint8 x int8 `MatMulInteger` on its dot-product kernels. Every product and sum
is an exact integer, so the int32 output is the same, and so is the audio after it, as long as
onnxruntime treats the rest of both graphs alike.

The kernel is exact on VNNI x86 and on ARM. x86 CPUs without VNNI multiply uint8 by int8 with an
instruction that saturates 16-bit pair sums. So `prepare` uses the rewrite only on VNNI x86 or
on ARM, and only after a probe on this machine gives bit-identical audio. Otherwise, or if
anything in the rewrite or the probe fails, it keeps the original model and says why in one
line.

One difference outside Kokoro's shapes: where the padded input is shorter than the kernel's
span, `ConvInteger` raises and the rewrite returns an empty output.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

import numpy as np

CPUINFO = Path("/proc/cpuinfo")
SUFFIX = ".gemm1.onnx"  # bump the number when `rewrite` changes, so no older file is reused
# Spoken by both models before the rewrite is used: digits, a name and a question, US and UK.
PROBE = (
    ("af_heart", "Quickly now, is it 7:45 or 8:15 at the Zoological Garden?"),
    ("bm_george", "The birch canoe slid on the smooth planks, said Doctor Jones."),
)


def _attrs(node) -> dict:
    from onnx import helper  # noqa: PLC0415

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def rewrite(model):
    """`model` (an `onnx.ModelProto`) with every 1-D `ConvInteger` as im2col + `MatMulInteger`.

    Returns:
        `(new_model, count)`: a rewritten copy and how many nodes were rewritten.

    Raises:
        ValueError: a `ConvInteger` this rewrite does not cover: not 1-D, grouped, `auto_pad`
            set, activations not from `DynamicQuantizeLinear` (uint8), weights not a uint8
            [C_out, C_in, k] initializer, or a zero point missing or not one scalar. Nothing is
            half-rewritten.
    """
    import onnx  # noqa: PLC0415
    from onnx import helper, numpy_helper  # noqa: PLC0415

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    quantised = {o for n in g.node if n.op_type == "DynamicQuantizeLinear" for o in n.output[:1]}
    nodes, added, count = [], [], 0

    def const(name: str, value) -> str:
        added.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for node in g.node:
        if node.op_type != "ConvInteger":
            nodes.append(node)
            continue
        a = _attrs(node)
        where = f"ConvInteger {node.name!r}"
        if len(a.get("kernel_shape", ())) != 1 or a.get("group", 1) != 1:
            raise ValueError(f"{where}: only 1-D ungrouped convolutions are rewritten")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{where}: auto_pad is not rewritten")
        if len(node.input) != 4 or node.input[1] not in inits or node.input[3] not in inits:
            raise ValueError(f"{where}: weights and both zero points must be given")
        x, w, x_zp, w_zp = node.input
        if x not in quantised or not x_zp:
            raise ValueError(f"{where}: activations must come from DynamicQuantizeLinear")
        weight = numpy_helper.to_array(inits[w])
        zero = numpy_helper.to_array(inits[w_zp])
        if weight.ndim != 3 or weight.dtype != np.uint8:
            raise ValueError(f"{where}: weights must be a uint8 [C_out, C_in, k] initializer")
        if zero.dtype != np.uint8 or zero.size != 1:
            raise ValueError(f"{where}: the weights' zero point must be one uint8 scalar")
        (k,) = a["kernel_shape"]
        (d,) = a.get("dilations", [1])
        (s,) = a.get("strides", [1])
        left, right = a.get("pads", [0, 0])
        c_out, c_in, _ = weight.shape
        p = f"{node.name}#{count}/gemm"  # unique even where node names are empty or repeat
        # Row j * c_in + c of the column matrix holds tap j of input channel c.
        cols = weight.transpose(2, 1, 0).reshape(k * c_in, c_out).astype(np.int16) - 128
        w_name = const(f"{p}/w", cols.astype(np.int8))
        zp_name = const(f"{p}/w_zp", np.array(int(zero.reshape(())) - 128, np.int8))
        nodes.append(helper.make_node("Transpose", [x], [f"{p}/xt"], perm=[0, 2, 1]))
        pads = const(f"{p}/pads", np.array([0, left, 0, 0, right, 0], np.int64))
        nodes.append(helper.make_node("Pad", [f"{p}/xt", pads, x_zp], [f"{p}/xp"]))
        axes = const(f"{p}/axes", np.array([1], np.int64))
        steps = const(f"{p}/steps", np.array([s], np.int64))
        taps = []
        for j in range(k):
            # From tap j's first input to the padded length less the taps after it: every tap
            # then has T_out = floor((T_pad - d (k - 1) - 1) / s) + 1 rows.
            tail = (k - 1 - j) * d
            end = -tail if tail else np.iinfo(np.int64).max
            start = const(f"{p}/start{j}", np.array([j * d], np.int64))
            stop = const(f"{p}/end{j}", np.array([end], np.int64))
            taps.append(f"{p}/tap{j}")
            nodes.append(
                helper.make_node("Slice", [f"{p}/xp", start, stop, axes, steps], [taps[-1]])
            )
        if k > 1:
            nodes.append(helper.make_node("Concat", taps, [f"{p}/cols"], axis=2))
        else:
            nodes.append(helper.make_node("Identity", taps, [f"{p}/cols"]))
        nodes.append(
            helper.make_node("MatMulInteger", [f"{p}/cols", w_name, x_zp, zp_name], [f"{p}/y"])
        )
        nodes.append(helper.make_node("Transpose", [f"{p}/y"], [node.output[0]], perm=[0, 2, 1]))
        count += 1
    used = {i for n in nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept + added)
    return model, count


def exact_kernels() -> str | None:
    """None where onnxruntime's uint8 x int8 kernels are exact on this CPU, else why not."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return None  # dot-product and widening NEON kernels both sum exactly into int32
    if machine not in ("x86_64", "amd64"):
        return f"CPU {machine!r} untested"
    try:
        flags = set(CPUINFO.read_text().split())
    except OSError:
        return f"no {CPUINFO} to find VNNI in"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return None
    return "this x86 CPU has no VNNI"


def _probe(model: Path, voices: Path) -> list[np.ndarray]:
    """The probe sentences as the corpus builder's engine speaks them with `model`."""
    from mkd_jax.corpus.voices import KokoroEngine  # noqa: PLC0415

    # phonemizer warns about word counts on every line with digits; the audio is what matters
    logging.getLogger("phonemizer").setLevel(logging.ERROR)
    engine = KokoroEngine(voices.parent, threads=1, model=model)
    return [engine([(voice, 1.0)], text, 1.0)[0] for voice, text in PROBE]


def prepare(model: Path, voices: Path) -> Path:
    """The Kokoro model this machine should run: the rewritten one (built beside `model` once)
    when its kernels are exact here and the probe sentences come out bit-identical, else
    `model`. Prints one line saying which and, if the original, why. Never raises for the
    rewrite's sake: any failure in building or probing it keeps the original (and removes a
    rewritten file that failed, so the next build makes it again)."""
    why = exact_kernels()
    fast = model.with_name(model.name.removesuffix(".onnx") + SUFFIX)
    if why is None:
        try:
            why = _build_and_probe(model, fast, voices)
        except Exception as e:  # noqa: BLE001 - a speed-up must never fail the corpus build
            first = (str(e).strip().splitlines() or [""])[0]  # one line, as promised
            why = f"the rewrite failed: {type(e).__name__}: {first}"
        if why is not None:
            fast.unlink(missing_ok=True)
    if why is None:
        print("kokoro: convolutions as integer GEMMs (probe audio bit-identical)", file=sys.stderr)
        return fast
    print(f"kokoro: original ConvInteger model ({why})", file=sys.stderr)
    return model


def _build_and_probe(model: Path, fast: Path, voices: Path) -> str | None:
    """None when `fast` (built here if missing) speaks the probe like `model`, else why not."""
    if not fast.is_file():
        try:
            import onnx  # noqa: PLC0415
        except ImportError:
            return "the `onnx` package is missing (`pip install -e .[demo]`)"
        try:
            rewritten, _ = rewrite(onnx.load(str(model)))
        except ValueError as e:  # not the model this rewrite knows: keep it as it is
            return f"rewrite refused: {e}"
        tmp = fast.with_name(f"{fast.name}.{os.getpid()}.tmp")  # builders may share a cache
        onnx.save(rewritten, str(tmp))
        tmp.replace(fast)
    for a, b in zip(_probe(model, voices), _probe(fast, voices), strict=True):
        if not np.array_equal(a, b):
            return "the probe's audio differs from the original model's on this machine"
    return None
