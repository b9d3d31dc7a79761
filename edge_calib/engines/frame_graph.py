"""The graph the runtime feeds a camera frame: pre- and post-processing moved into the network,
where a device runs them beside it (TensorRT fuses the cast and normalisation into the first
layer; jetson-inference and DeepStream do the same in CUDA kernels).

``frame_graph(model, spec, task)`` wraps a classifier or fused graph:

- input ``frame``: uint8 (N, H, W, C) at the spec's size and channels, RGB (as capture gives
  it); the graph reverses the channels for a BGR spec, casts, transposes to NCHW and
  normalises with the same float32 operations as ``InputSpec.normalize``
  (``(u8 / 255 - mean) / std``), so the logits are those of the float path bit for bit;
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

FRAME, CLASSES, CONFIDENCE = "frame", "classes", "confidence"


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def frame_graph(model: onnx.ModelProto, spec, task: str) -> onnx.ModelProto:
    """A copy of ``model`` that takes uint8 frames and also returns the class map/top-1 (one
    clear error for a graph it cannot wrap: not one image input, or opset < 7)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
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

    pre = [helper.make_node("Cast", [FRAME], ["frame_f32"], to=TensorProto.FLOAT)]
    rgb = "frame_f32"
    if spec.colour_order == "BGR" and c == 3:
        pre.append(helper.make_node("Gather", [rgb, const("frame_bgr_order",
                                                          np.array([2, 1, 0], np.int64))],
                                    ["frame_bgr"], axis=3))
        rgb = "frame_bgr"
    pre += [
        helper.make_node("Transpose", [rgb], ["frame_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", ["frame_nchw", const("frame_255", np.float32(255.0))],
                         ["frame_unit"]),
        helper.make_node("Sub", ["frame_unit", const("frame_mean", np.asarray(
            spec.mean, np.float32).reshape(1, c, 1, 1))], ["frame_centred"]),
        helper.make_node("Div", ["frame_centred", const("frame_std", np.asarray(
            spec.std, np.float32).reshape(1, c, 1, 1))], [image]),
    ]
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
    nodes = constants + pre + list(graph.node) + post
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
