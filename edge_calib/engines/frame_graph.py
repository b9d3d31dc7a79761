"""The graph the runtime feeds a camera frame: pre- and post-processing moved into the network,
where a device runs them beside it (TensorRT fuses the cast and normalisation into the first
layer; jetson-inference and DeepStream do the same in CUDA kernels).

``frame_graph(model, spec, task)`` wraps a classifier or fused graph:

- input ``frame``: uint8 (N, H, W, C) at the spec's size and channels, RGB (as capture gives
  it); the graph reverses the channels for a BGR spec, casts, transposes to NCHW and
  normalises with the same float32 operations as ``InputSpec.normalize``
  (``(u8 / 255 - mean) / std``), so the logits are those of the float path bit for bit;
- a curve calibrator in front (its per-pixel table index is an affine map of the normalised
  image, a Clip and a Cast to int, which recovers the 8-bit level) reads its index straight
  from the frame's uint8 levels, and its histogram sample is sliced from the uint8 frame before
  it is normalised: the full-frame normalisation then has no reader left and goes (the curve's
  table already holds normalised values). The rewrite is made only when every one of the 256
  levels of every channel is checked to give back its own index, so the outputs stay bit for bit;
- outputs: the original float ``logits`` (for checks; a runtime that asks only for the others
  does not copy them out), ``classes`` (ArgMax over the classes: uint8 (N, h, w) at the
  network's output resolution for segmenters, int32 (N,) for classifiers) and, for
  classifiers, ``confidence`` (the top-1 softmax probability, float32 (N,)).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.errors import EdgeCalibError
from ..deploy.ort_session import graph_inputs

FRAME, CLASSES, CONFIDENCE = "frame", "classes", "confidence"
FRAME_NCHW = "frame_nchw"  # the uint8 frame, channels in the spec's order, NCHW


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def frame_graph(model: onnx.ModelProto, spec, task: str, copy: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` (``copy=False``: ``model`` itself, changed in place, for a caller
    that parsed it for this alone) that takes uint8 frames and also returns the class
    map/top-1 (one clear error for a graph it cannot wrap: not one image input, or opset < 7)."""
    if copy:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inputs = graph_inputs(graph)
    if len(inputs) != 1 or not graph.output:
        raise EdgeCalibError(f"frame graph: expected one image input and an output, got "
                             f"{len(inputs)} inputs and {len(graph.output)} outputs")
    image, logits = inputs[0].name, graph.output[0].name
    if _opset(model) < 7:
        raise EdgeCalibError(f"frame graph: opset {_opset(model)} is older than 7 (no "
                             "broadcasting Div/Sub)")
    c = spec.channels
    constants = []

    def const(name, array):  # Constant nodes: valid in every IR version (IR 3 lists
        constants.append(helper.make_node(  # initialisers among the inputs)
            "Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name)))
        return name

    pre, rgb = [], FRAME  # channel order and layout on the uint8 frame (exact, a quarter the bytes)
    if spec.colour_order == "BGR" and c == 3:
        pre.append(helper.make_node("Gather", [rgb, const("frame_bgr_order",
                                                          np.array([2, 1, 0], np.int64))],
                                    ["frame_bgr"], axis=3))
        rgb = "frame_bgr"
    pre.append(helper.make_node("Transpose", [rgb], [FRAME_NCHW], perm=[0, 3, 1, 2]))
    const("frame_255", np.float32(255.0))
    const("frame_mean", np.asarray(spec.mean, np.float32).reshape(1, c, 1, 1))
    const("frame_std", np.asarray(spec.std, np.float32).reshape(1, c, 1, 1))
    body = _read_levels_from_frame(list(graph.node), image, spec, _constants(graph))
    if any(image in node.input for node in body):
        pre += _normalise(FRAME_NCHW, image)
    post = [helper.make_node("ArgMax", [logits], ["classes_i64"], axis=1, keepdims=0)]
    if task == "segmentation":
        post.append(helper.make_node("Cast", ["classes_i64"], [CLASSES], to=TensorProto.UINT8))
        outputs = [helper.make_tensor_value_info(CLASSES, TensorProto.UINT8, ["batch", "h", "w"])]
    else:
        post += [helper.make_node("Cast", ["classes_i64"], [CLASSES], to=TensorProto.INT32),
                 helper.make_node("Softmax", [logits], ["probabilities"], axis=1)]
        if _opset(model) >= 18:
            post.append(helper.make_node("ReduceMax", ["probabilities", const(
                "confidence_axes", np.array([1], np.int64))], [CONFIDENCE], keepdims=0))
        else:
            post.append(helper.make_node("ReduceMax", ["probabilities"], [CONFIDENCE], axes=[1],
                                         keepdims=0))
        outputs = [helper.make_tensor_value_info(CLASSES, TensorProto.INT32, ["batch"]),
                   helper.make_tensor_value_info(CONFIDENCE, TensorProto.FLOAT, ["batch"])]
    nodes = constants + pre + body + post
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(inputs[0])
    graph.input.insert(0, helper.make_tensor_value_info(
        FRAME, TensorProto.UINT8, ["batch", spec.height, spec.width, c]))
    graph.output.extend(outputs)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EdgeCalibError(f"frame graph: not a valid ONNX graph "
                             f"({str(exc).strip().splitlines()[0][:160]})") from None
    return model


def _normalise(source: str, out: str) -> list:
    """uint8 NCHW ``source`` -> ``out`` = (u8 / 255 - mean) / std in float32, the operations of
    ``InputSpec.normalize`` (the ``frame_*`` constants are the graph's)."""
    return [helper.make_node("Cast", [source], [f"{out}_f32"], to=TensorProto.FLOAT),
            helper.make_node("Div", [f"{out}_f32", "frame_255"], [f"{out}_unit"]),
            helper.make_node("Sub", [f"{out}_unit", "frame_mean"], [f"{out}_centred"]),
            helper.make_node("Div", [f"{out}_centred", "frame_std"], [out])]


def _constants(graph) -> dict[str, np.ndarray]:
    """The values of the graph's initialisers and Constant nodes, by name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _read_levels_from_frame(nodes: list, image: str, spec, values: dict) -> list:
    """``nodes`` with a curve calibrator's table index read from the uint8 frame (see the module
    docstring); unchanged unless ``image`` is read only by Slice nodes and by one
    BatchNormalization -> Clip -> Cast(int) chain that gives back every 8-bit level."""
    readers = [n for n in nodes if image in n.input]
    index = [n for n in readers if n.op_type == "BatchNormalization" and n.input[0] == image]
    slices = [n for n in readers if n.op_type == "Slice" and list(n.input).count(image) == 1
              and n.input[0] == image]
    if len(index) != 1 or len(index) + len(slices) != len(readers):
        return nodes
    chain = [index[0]]
    for op in ("Clip", "Cast"):
        following = [n for n in nodes if chain[-1].output[0] in n.input]
        if len(following) != 1 or following[0].op_type != op:
            return nodes
        chain.append(following[0])
    bn, clip, cast = chain
    if next(a.i for a in cast.attribute if a.name == "to") not in (TensorProto.INT32,
                                                                     TensorProto.INT64):
        return nodes
    try:
        scale, bias, mean, var = (values[name].astype(np.float32) for name in bn.input[1:5])
        low, high = (np.float32(values[name]) if name else None for name in
                     (list(clip.input) + ["", ""])[1:3])
    except KeyError:
        return nodes
    if clip.attribute:  # Clip before opset 11: bounds as attributes
        bounds = {a.name: np.float32(a.f) for a in clip.attribute}
        low, high = bounds.get("min"), bounds.get("max")
    eps = np.float32(next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5))
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 256).repeat(spec.channels, axis=1)
    x = spec.normalize(levels.transpose(0, 2, 3, 1))  # (1, C, 1, 256), as the frame graph does
    shape = (1, -1, 1, 1)
    affine = ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
              * scale.reshape(shape) + bias.reshape(shape))
    affine = np.clip(affine, low if low is not None else -np.inf,
                     high if high is not None else np.inf)
    if not np.array_equal(np.trunc(affine), levels.astype(np.float32)):
        return nodes
    cast.input[0] = FRAME_NCHW  # uint8 -> int: the level itself
    out = []
    for node in nodes:
        if node is bn or node is clip:
            continue
        if any(node is n for n in slices):  # slice the uint8 frame, then normalise the few pixels kept
            sample = node.output[0]
            node.input[0], node.output[0] = FRAME_NCHW, f"{sample}_u8"
            out += [node, *_normalise(f"{sample}_u8", sample)]
            continue
        out.append(node)
    return out
