"""Run a user's ONNX network as a differentiable torch module, so a calibrator can be trained
against a model edge-calib did not train (its ONNX file is deployed unchanged).

Why our own converter: onnx2torch and onnx2pytorch both require torchvision, which does not
import beside the CPU torch build used here and otherwise pulls a multi-GB CUDA torch. A
frozen network only needs a forward pass with gradients to its input, so a small interpreter
over the graph is enough: each node calls the torch function of its operator (the operators
common in vision networks, listed in ``OPERATORS``; anything else is one error naming it).
Every operator is checked against ONNX Runtime in the tests.

Quantised graphs are simulated exactly: QuantizeLinear rounds (half to even) and saturates on
its zero point's integer grid, DequantizeLinear maps back, so ONNX Runtime's static QDQ models
(per tensor or per channel, with the clipping its quantiser folds into the ranges) compute the
same values here; dynamic quantisation (DynamicQuantizeLinear, MatMulInteger, ConvInteger)
likewise, in float64 where the graph accumulates in int32. Gradients pass straight through the
rounding (zero where a value saturates), as for our own INT8 models. A Reshape whose target
starts with the graph's fixed batch size (exports without a dynamic batch write it as a
constant) takes the batch of its input instead, so the module trains on batches.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from ..core.errors import EdgeCalibError
from ..deploy.ort_session import graph_inputs

# metadata_props key of a graph whose [K, H, W] output the importer gave a batch axis
BATCH_AXIS_ADDED = "edge_calib.batch_axis_added"
INTEGER = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)
ONNX_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
               7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = torch.from_numpy(numpy_helper.to_array(value).copy())
        out[a.name] = value
    return out


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _pads_2d(pads, x, value=0.0, mode="constant"):
    """ONNX pads [top, left, bottom, right] (x1_begin, x2_begin, x1_end, x2_end) on NCHW."""
    top, left, bottom, right = pads
    if not any(pads):
        return x
    return F.pad(x, (left, right, top, bottom), mode=mode, value=value) if mode == "constant" \
        else F.pad(x, (left, right, top, bottom), mode=mode)


def _auto_pad(a, x, kernel, strides, dilations):
    """Explicit pads for auto_pad SAME_UPPER / SAME_LOWER / VALID / NOTSET."""
    mode = a.get("auto_pad", "NOTSET")
    if mode == "NOTSET":
        return list(a.get("pads", [0] * 4))
    if mode == "VALID":
        return [0] * 4
    pads_begin, pads_end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        pads_begin.append(big if mode == "SAME_LOWER" else small)
        pads_end.append(small if mode == "SAME_LOWER" else big)
    return pads_begin + pads_end


def op_conv(i, a):
    x, w = i[0], i[1]
    k = a.get("kernel_shape", list(w.shape[2:]))
    strides, dil = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
    x = _pads_2d(_auto_pad(a, x, k, strides, dil), x)
    return F.conv2d(x, w, i[2] if len(i) > 2 else None, strides, 0, dil, a.get("group", 1))


def op_conv_transpose(i, a):
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        raise EdgeCalibError("ConvTranspose with asymmetric pads is not supported")
    return F.conv_transpose2d(i[0], i[1], i[2] if len(i) > 2 else None, a.get("strides", [1, 1]),
                              pads[:2], a.get("output_padding", [0, 0]), a.get("group", 1),
                              a.get("dilations", [1, 1]))


def op_gemm(i, a):
    x = i[0].t() if a.get("transA") else i[0]
    w = i[1].t() if a.get("transB") else i[1]
    y = a.get("alpha", 1.0) * (x @ w)
    return y + a.get("beta", 1.0) * i[2] if len(i) > 2 and i[2] is not None else y


def op_pool(kind):
    def pool(i, a):
        x, k = i[0], a["kernel_shape"]
        strides = a.get("strides", [1] * len(k))
        pads = _auto_pad(a, x, k, strides, a.get("dilations", [1] * len(k)))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            x = _pads_2d(pads, x, value=-math.inf)
            return F.max_pool2d(x, k, strides, 0, a.get("dilations", [1, 1]), ceil)
        if a.get("count_include_pad", 0) or not any(pads):
            return F.avg_pool2d(_pads_2d(pads, x), k, strides, 0, ceil)
        sums = F.avg_pool2d(_pads_2d(pads, x), k, strides, 0, ceil, divisor_override=1)
        counts = F.avg_pool2d(_pads_2d(pads, torch.ones_like(x[:1, :1])), k, strides, 0, ceil,
                              divisor_override=1)
        return sums / counts
    return pool


def op_reshape(i, a):
    """Reshape; ``a["fixed_batch"]`` (set at load, only where the data carries the batch) is the
    batch of a fixed-batch export: a target whose first entry is it stands for the batch."""
    shape = _ints(i[1])
    fixed_batch = a.get("fixed_batch")
    if fixed_batch and shape and shape[0] == fixed_batch and i[0].shape[0] != fixed_batch:
        shape[0] = i[0].shape[0]
    shape = [i[0].shape[k] if v == 0 and not a.get("allowzero") else v for k, v in enumerate(shape)]
    return i[0].reshape(shape)


def op_slice(i, a):
    x = i[0]
    if len(i) == 1:  # opset < 10: starts, ends and axes are attributes
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(i[1]), _ints(i[2])
        axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise EdgeCalibError("Slice with negative steps is not supported")
        size = x.shape[ax]
        s, e = max(-size, min(s, size)), max(-size, min(e, size))
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


def op_resize(i, a):
    x = i[0]
    mode = a.get("mode", "nearest")
    sizes = i[3] if len(i) > 3 and i[3] is not None and i[3].numel() else None
    scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else None
    size = _ints(sizes)[2:] if sizes is not None else \
        [int(math.floor(d * s)) for d, s in zip(x.shape[2:], scales.tolist()[2:])]
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        if coord == "asymmetric" and a.get("nearest_mode", "round_prefer_floor") == "floor":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="nearest-exact")
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=coord == "align_corners")
    raise EdgeCalibError(f"Resize mode {mode!r} with {coord!r} coordinates is not supported")


def op_upsample(i, a):
    """Upsample (opsets 7-9): scales as an attribute (7-8) or an input (9)."""
    scales = list(a["scales"]) if "scales" in a else i[1].tolist()
    size = [int(math.floor(d * s)) for d, s in zip(i[0].shape[2:], scales[2:])]
    if a.get("mode", "nearest") == "nearest":
        return F.interpolate(i[0], size=size, mode="nearest")
    return F.interpolate(i[0], size=size, mode="bilinear", align_corners=False)


def op_split(i, a):
    axis = a.get("axis", 0)
    split = a.get("split") or (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    if split is None:
        parts = a.get("num_outputs")
        size = i[0].shape[axis]
        split = [size // parts] * parts if parts else None
    return torch.split(i[0], split, dim=axis)


def op_reduce(fn):
    def reduce(i, a):
        axes = a.get("axes")
        if axes is None and len(i) > 1 and i[1] is not None:
            axes = _ints(i[1])
        keep = bool(a.get("keepdims", 1))
        if not axes:
            axes = list(range(i[0].dim()))
        return fn(i[0], dim=tuple(axes), keepdim=keep)
    return reduce


def op_squeeze(i, a):
    axes = a.get("axes") or (_ints(i[1]) if len(i) > 1 and i[1] is not None else None)
    if axes is None:
        return i[0].squeeze()
    for ax in sorted((ax % i[0].dim() for ax in axes), reverse=True):
        i[0] = i[0].squeeze(ax)
    return i[0]


def op_unsqueeze(i, a):
    axes = a.get("axes") or _ints(i[1])
    x = i[0]
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


def op_clip(i, a):
    low = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    high = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    x = i[0]
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return x


QUANT_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767),
                torch.int32: (-2 ** 31, 2 ** 31 - 1)}


def _per_axis(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-axis scale or zero point (1-D) shaped to broadcast against ``x`` along ``axis``."""
    if t.dim() != 1 or x.dim() <= 1 or t.numel() == 1:
        return t.reshape(()) if t.numel() == 1 else t
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return t.reshape(shape)


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX and ONNX Runtime do) with a straight-through gradient."""
    return v + (torch.round(v) - v).detach()


def op_quantize(i, a):
    """QuantizeLinear, simulated exactly: q = saturate(round(x / scale) + zero_point) on the zero
    point's integer grid (uint8 when absent), returned as a float tensor of the integer values
    with a straight-through gradient (zero where it saturates)."""
    x, scale = i[0], i[1]
    zero = i[2] if len(i) > 2 and i[2] is not None else torch.zeros((), dtype=torch.uint8)
    low, high = QUANT_RANGES[zero.dtype]
    axis = a.get("axis", 1)
    scale, zero_f = _per_axis(scale, x, axis), _per_axis(zero, x, axis).to(torch.float32)
    return torch.clamp(round_ste(x / scale) + zero_f, low, high)


def op_dequantize(i, a):
    """DequantizeLinear: (q - zero_point) * scale, for a stored integer tensor (a weight, an
    int32 bias) and for the integer values a simulated QuantizeLinear produced."""
    x, scale = i[0], i[1]
    zero = i[2] if len(i) > 2 and i[2] is not None else torch.zeros((), dtype=torch.int32)
    axis = a.get("axis", 1)
    scale, zero = _per_axis(scale, x, axis), _per_axis(zero, x, axis)
    return (x.to(torch.float32) - zero.to(torch.float32)) * scale


def op_dynamic_quantize(i, a):
    """DynamicQuantizeLinear: uint8 with the scale and zero point of this tensor's own range
    (including 0): scale = (max(0, max x) - min(0, min x)) / 255, zero = saturate(round(-min /
    scale)); the range is treated as a constant for the gradient."""
    x = i[0]
    low = torch.clamp(x.detach().min(), max=0.0)
    high = torch.clamp(x.detach().max(), min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-low / scale), 0, 255)
    q = torch.clamp(round_ste(x / scale) + zero, 0, 255)
    return q, scale, zero.to(torch.uint8)


def _centred(x, zero, axis):
    """An integer operand minus its zero point, in float64 (exact for int32 accumulations)."""
    if zero is None:
        return x.to(torch.float64)
    return x.to(torch.float64) - _per_axis(zero, x, axis).to(torch.float64)


def op_matmul_integer(i, a):
    """MatMulInteger: (A - a_zero) @ (B - b_zero), exactly (float64), as int32 values."""
    a_zero = i[2] if len(i) > 2 else None
    b_zero = i[3] if len(i) > 3 else None
    return torch.matmul(_centred(i[0], a_zero, -1), _centred(i[1], b_zero, -1)).to(torch.float32)


def op_conv_integer(i, a):
    """ConvInteger: Conv of (x - x_zero) with (w - w_zero), exactly (float64), as int32 values."""
    x = _centred(i[0], i[2] if len(i) > 2 else None, 1)
    w = _centred(i[1], i[3] if len(i) > 3 else None, 0)
    k = a.get("kernel_shape", list(w.shape[2:]))
    strides, dil = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
    x = _pads_2d(_auto_pad(a, x, k, strides, dil), x)
    return F.conv2d(x, w, None, strides, 0, dil, a.get("group", 1)).to(torch.float32)


def op_pad(i, a):
    pads = _ints(i[1]) if len(i) > 1 else list(a["pads"])
    value = float(i[2]) if len(i) > 2 and i[2] is not None and i[2].numel() else a.get("value", 0.0)
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[a.get("mode", "constant")]
    half = len(pads) // 2
    if any(pads[:2]) or any(pads[half:half + 2]):
        raise EdgeCalibError("Pad on the batch or channel axes is not supported")
    return _pads_2d([pads[2], pads[3], pads[half + 2], pads[half + 3]], i[0], value, mode)


def op_gather(i, a):
    x, index = i[0], i[1]
    axis = a.get("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = torch.index_select(x, axis, index.reshape(-1))
    return picked.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1:]))


def op_softmax(log):
    def softmax(i, a, opset):
        axis = a.get("axis", -1 if opset >= 13 else 1)
        if opset < 13:  # flattened to 2D at axis, as the old operator was defined
            shape = i[0].shape
            x = i[0].reshape(int(np.prod(shape[:axis])), -1)
            return (F.log_softmax if log else F.softmax)(x, 1).reshape(shape)
        return (F.log_softmax if log else F.softmax)(i[0], axis)
    return softmax


OPERATORS = {
    "Conv": op_conv, "ConvTranspose": op_conv_transpose, "Gemm": op_gemm,
    "MatMul": lambda i, a: torch.matmul(i[0], i[1]),
    "Add": lambda i, a: i[0] + i[1], "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: (i[0] // i[1]) if i[0].dtype in INTEGER else i[0] / i[1],
    "Pow": lambda i, a: torch.pow(i[0], i[1]), "Sqrt": lambda i, a: torch.sqrt(i[0]),
    "Exp": lambda i, a: torch.exp(i[0]), "Log": lambda i, a: torch.log(i[0]),
    "Neg": lambda i, a: -i[0], "Abs": lambda i, a: torch.abs(i[0]),
    "Erf": lambda i, a: torch.erf(i[0]), "Reciprocal": lambda i, a: 1.0 / i[0],
    "Min": lambda i, a: torch.stack(torch.broadcast_tensors(*i)).amin(0),
    "Max": lambda i, a: torch.stack(torch.broadcast_tensors(*i)).amax(0),
    "Sum": lambda i, a: sum(i[1:], i[0]),
    "Relu": lambda i, a: F.relu(i[0]),
    "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "PRelu": lambda i, a: torch.where(i[0] >= 0, i[0], i[0] * i[1]),
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]), "Tanh": lambda i, a: torch.tanh(i[0]),
    "HardSigmoid": lambda i, a: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda i, a: F.hardswish(i[0]),
    "Elu": lambda i, a: F.elu(i[0], a.get("alpha", 1.0)),
    "Softplus": lambda i, a: F.softplus(i[0]),
    "Clip": op_clip,
    "BatchNormalization": lambda i, a: F.batch_norm(i[0], i[3], i[4], i[1], i[2], False, 0.0,
                                                    a.get("epsilon", 1e-5)),
    "InstanceNormalization": lambda i, a: F.instance_norm(i[0], weight=i[1], bias=i[2],
                                                          eps=a.get("epsilon", 1e-5)),
    "MaxPool": op_pool("max"), "AveragePool": op_pool("avg"),
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=(2, 3), keepdim=True),
    "GlobalMaxPool": lambda i, a: i[0].amax(dim=(2, 3), keepdim=True),
    "Flatten": lambda i, a: i[0].reshape(int(np.prod(i[0].shape[:a.get("axis", 1)])), -1),
    "Transpose": lambda i, a: i[0].permute(*(a.get("perm") or reversed(range(i[0].dim())))),
    "Concat": lambda i, a: torch.cat(i, a["axis"]),
    "Slice": op_slice, "Resize": op_resize, "Pad": op_pad,
    "Squeeze": op_squeeze, "Unsqueeze": op_unsqueeze,
    "Gather": lambda i, a: op_gather(i, a),
    "Shape": lambda i, a: torch.tensor(i[0].shape, dtype=torch.int64),
    "Cast": lambda i, a: i[0].to(ONNX_DTYPES[a["to"]]),
    "Identity": lambda i, a: i[0], "Dropout": lambda i, a: i[0],
    "ReduceMean": op_reduce(torch.mean), "ReduceSum": op_reduce(torch.sum),
    "ReduceMax": op_reduce(torch.amax),
    "Expand": lambda i, a: i[0] * torch.ones(_ints(i[1]), dtype=i[0].dtype),
    "Where": lambda i, a: torch.where(i[0], i[1], i[2]),
    "Equal": lambda i, a: i[0] == i[1],
    "ConstantOfShape": lambda i, a: torch.full(_ints(i[0]), float(a["value"].reshape(-1)[0])
                                               if "value" in a else 0.0),
    "QuantizeLinear": op_quantize, "DequantizeLinear": op_dequantize,
    "DynamicQuantizeLinear": op_dynamic_quantize, "MatMulInteger": op_matmul_integer,
    "ConvInteger": op_conv_integer, "Reshape": op_reshape,
    "Upsample": op_upsample, "Split": op_split,
    "Floor": lambda i, a: torch.floor(i[0]), "Ceil": lambda i, a: torch.ceil(i[0]),
    "Round": lambda i, a: torch.round(i[0]), "Sign": lambda i, a: torch.sign(i[0]),
    "Less": lambda i, a: i[0] < i[1], "Greater": lambda i, a: i[0] > i[1],
    "LessOrEqual": lambda i, a: i[0] <= i[1], "GreaterOrEqual": lambda i, a: i[0] >= i[1],
    "Not": lambda i, a: torch.logical_not(i[0]),
    "Tile": lambda i, a: i[0].repeat(*_ints(i[1])),
    "ReduceMin": op_reduce(torch.amin),
}
# operators that need the graph's opset (called with the module as well)
WITH_CONTEXT = {"Softmax": lambda i, a, m: op_softmax(False)(i, a, m.opset),
                "LogSoftmax": lambda i, a, m: op_softmax(True)(i, a, m.opset)}


LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger",
          "MatMulInteger")  # tapped when their weight is stored


class OnnxModule(nn.Module):
    """The graph of ``model`` as a torch module: float initialisers are (frozen) parameters,
    the nodes run in order. ``tap``, when set, is called with the input of every Conv / Gemm /
    MatMul whose weight is stored (the layers whose input statistics are recorded)."""

    def __init__(self, model: onnx.ModelProto, layout: str = "nchw"):
        super().__init__()
        graph = model.graph
        self.channels_last = layout.lower() == "nhwc"  # the graph takes NHWC: transpose first
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        unknown = sorted({n.op_type for n in graph.node if n.op_type not in OPERATORS
                          and n.op_type not in WITH_CONTEXT and n.op_type != "Constant"
                          or n.domain not in ("", "ai.onnx")})
        if unknown:
            raise EdgeCalibError(f"the ONNX graph uses operator(s) edge-calib cannot run for "
                                 f"training: {', '.join(unknown)} (supported: "
                                 f"{', '.join(sorted([*OPERATORS, *WITH_CONTEXT]))})")
        inputs = graph_inputs(graph)
        if len(inputs) != 1:
            raise EdgeCalibError(f"the ONNX graph has {len(inputs)} inputs; edge-calib needs one "
                                 "image input")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        self.fixed_batch = dims[0].dim_value if dims and dims[0].dim_value > 0 else None
        self.names: dict[str, str] = {}  # ONNX tensor name -> attribute name
        self.params = nn.ParameterList()
        self.constants: list[torch.Tensor] = []
        for init in graph.initializer:
            self._store(init.name, torch.from_numpy(numpy_helper.to_array(init).copy()))
        self.nodes = []
        for node in graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                value = attrs.get("value")
                if value is None:
                    value = torch.tensor(attrs.get("value_float", attrs.get("value_int",
                                                                           attrs.get("value_ints"))))
                self._store(node.output[0], value)
                continue
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs))
        constant = set(self.names)  # tensors computed from initialisers alone (e.g. a DQ weight)
        for op, inputs, outputs, _ in self.nodes:
            if all(n in constant for n in inputs if n):
                constant.update(outputs)
        self.layer_nodes = {i for i, (op, inputs, _, _) in enumerate(self.nodes)
                            if op in LAYERS and len(inputs) > 1 and inputs[1] in constant}
        for op, inputs, _, attrs in self.nodes:  # not a constant's reshape (a bias to [1, -1, 1, 1])
            if op == "Reshape" and inputs[0] not in constant:
                attrs["fixed_batch"] = self.fixed_batch
        self.tap = None
        # a graph that quantises each batch by its own range (DynamicQuantizeLinear) gives each
        # frame what it gives that frame alone only when run one frame at a time; so does a
        # batch-1 graph whose output had no batch axis (it computes on frame 0 alone)
        self.per_frame = any(op == "DynamicQuantizeLinear" for op, _, _, _ in self.nodes) or any(
            p.key == BATCH_AXIS_ADDED for p in model.metadata_props)

    def _store(self, name: str, value: torch.Tensor):
        """A float tensor becomes a frozen parameter, anything else a buffer."""
        if value.dtype.is_floating_point:
            self.params.append(nn.Parameter(value.float(), requires_grad=False))
            self.names[name] = ("p", len(self.params) - 1)
        else:
            key = f"c{len(self.names)}"
            self.register_buffer(key, value)
            self.names[name] = ("b", key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: NCHW images, whatever the graph's own layout; a ``per_frame`` graph is run one
        frame at a time (its taps joined over the batch, as one run would give them)."""
        if not self.per_frame or len(x) == 1:
            return self._run(x)
        tap, frames, outputs = self.tap, [], []
        try:
            for i in range(len(x)):
                seen: list[torch.Tensor] = []
                self.tap = None if tap is None else seen.append
                outputs.append(self._run(x[i:i + 1]))
                frames.append(seen)
        finally:
            self.tap = tap
        if tap is not None:
            for parts in zip(*frames):
                tap(torch.cat(parts))
        return torch.cat(outputs)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        env = {self.input_name: x, "": None}
        for name, (kind, key) in self.names.items():
            env[name] = self.params[key] if kind == "p" else getattr(self, key)
        for index, (op, inputs, outputs, attrs) in enumerate(self.nodes):
            args = [env[n] for n in inputs]
            if self.tap is not None and index in self.layer_nodes:
                self.tap(args[0])
            try:
                result = (WITH_CONTEXT[op](args, attrs, self) if op in WITH_CONTEXT
                          else OPERATORS[op](args, attrs))
            except EdgeCalibError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
                raise EdgeCalibError(f"the ONNX graph's {op} node (#{index}, output "
                                     f"{outputs[0]!r}) cannot run here: "
                                     f"{str(exc).splitlines()[0][:160]}") from None
            results = result if isinstance(result, (list, tuple)) else [result]
            for out, value in zip(outputs, results):
                env[out] = value
        return env[self.output_name]
