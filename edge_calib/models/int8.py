"""INT8 with TensorRT's conventions, in one place: fake-quantised layers for training and
evaluation in torch, activation-scale estimation, and the explicit Q/DQ ONNX graph.

TensorRT's explicit quantisation: symmetric, zero point 0, per-channel weight scales
(``max|w| / 127`` per output channel) and per-tensor activation scales, with a Q/DQ pair on the
input of every Conv/Gemm. In torch the same arithmetic runs as fake quantisation
(``torch.fake_quantize_per_*_affine``, core aten ops, not torch.ao), whose gradient is the
straight-through estimator: identity inside the range, zero where the input saturates. So a
calibrator can be trained against exactly the deployed INT8 behaviour. Scales are estimated on
source-domain *quantization calibration data* (unrelated to our data calibrators).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from ..core.errors import EdgeCalibError

QMIN, QMAX = -128, 127
BIAS_INT32_ROOM = float(2 ** 30)  # |int32 bias| stays below this


# -- torch: fake-quantised layers -----------------------------------------------------------
class QuantLayer(nn.Module):
    """Shared INT8 machinery: input per-tensor scale, weight per-output-channel scales."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.enabled = True  # False while estimating activation ranges in float
        self.weight = nn.Parameter(layer.weight.detach().clone())
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight.shape[0])
        self.bias = nn.Parameter(bias.detach().clone())
        out = self.weight.shape[0]
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("weight_scale", torch.ones(out))

    def set_weight_scale(self):
        """scale_c = max(max|w_c| / 127, |b_c| / (input_scale * 2^30)): symmetric per output
        channel (an all-zero channel gets 1), raised where needed so that the bias stored as
        int32 at scale input_scale * scale_c fits with room to spare (ONNX Runtime's quantiser
        does the same); only a layer whose inputs are almost all zero, such as a
        squeeze-excitation input of an untrained network, needs the floor."""
        amax = self.weight.detach().abs().reshape(self.weight.shape[0], -1).amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        floor = self.bias.detach().abs() / (float(self.input_scale) * BIAS_INT32_ROOM)
        self.weight_scale.copy_(torch.maximum(scale, floor))

    def quant_input(self, x):
        if not self.enabled:
            return x
        return torch.fake_quantize_per_tensor_affine(x, float(self.input_scale), 0, QMIN, QMAX)

    def quant_weight(self):
        if not self.enabled:
            return self.weight
        zero = torch.zeros(self.weight.shape[0], dtype=torch.int32, device=self.weight.device)
        return torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, zero, 0,
                                                      QMIN, QMAX)


class QuantConv2d(QuantLayer):
    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def forward(self, x):
        return F.conv2d(self.quant_input(x), self.quant_weight(), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)


class QuantLinear(QuantLayer):
    def forward(self, x):
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


def quantize_layers(model: nn.Module) -> nn.Module:
    """Replace every Conv2d/Linear of a folded model, at any depth, by its fake-quantised twin
    (scales unset)."""
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(model, name, QuantConv2d(child))
        elif isinstance(child, nn.Linear):
            setattr(model, name, QuantLinear(child))
        else:
            quantize_layers(child)
    return model


def quant_params(module: nn.Module) -> dict:
    """{layer name: (input scale, per-channel weight scales)} of a fake-quantised model."""
    return {name: (float(m.input_scale), m.weight_scale.detach().numpy().copy())
            for name, m in module.named_modules() if isinstance(m, QuantLayer)}


# -- torch: activation scales from quantization calibration data ---------------------------
ACTIVATION_METHODS = ("max", "percentile")


@torch.no_grad()
def estimate_scales(model: nn.Module, batches, method: str = "percentile",
                    percentile: float = 99.99, values_per_batch: int = 1 << 21) -> dict:
    """Set every quantised layer's weight scale (max|w| / 127 per channel) and input scale
    (amax / 127, amax = max or ``percentile`` of |input| over the float model's activations).
    A layer input larger than ``values_per_batch`` values (a segmenter at full resolution)
    contributes a seeded uniform sample of that many to the percentile, which bounds memory.

    Returns {layer: {"input_amax", "input_scale"}} for the report.
    """
    if method not in ACTIVATION_METHODS:
        raise EdgeCalibError(f"unknown activation calibration {method!r}; choose "
                             f"{', '.join(ACTIVATION_METHODS)}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    samples: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    generator = torch.Generator().manual_seed(0)

    def record(name, values):
        values = values.detach().abs().flatten()
        if values.numel() > values_per_batch:
            pick = torch.randint(values.numel(), (values_per_batch,), generator=generator)
            values = torch.cat([values[pick], values.max()[None]])  # the max is always kept
        samples[name].append(values.numpy())

    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: record(name, args[0]))
             for n, m in layers.items()]
    for m in layers.values():
        m.enabled = False
    try:
        model.eval()
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for m in layers.values():
            m.enabled = True
    report = {}
    for name, module in layers.items():
        values = np.concatenate(samples[name])
        amax = float(values.max() if method == "max" else np.percentile(values, percentile))
        amax = amax if amax > 0 else 1.0
        module.input_scale.fill_(amax / 127.0)
        module.set_weight_scale()
        report[name] = {"input_amax": amax, "input_scale": amax / 127.0}
    return report


# -- ONNX: explicit QuantizeLinear / DequantizeLinear pairs ---------------------------------
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
PASS_THROUGH = ("Relu", "MaxPool", "Flatten", "Reshape")  # commute with zero-point-0 quantisation


def count_qdq(model: onnx.ModelProto) -> int:
    return sum(node.op_type in QDQ_OPS for node in model.graph.node)


def _layer_of(weight_name: str) -> str:
    return weight_name.rsplit(".", 1)[0]


def insert_qdq(model: onnx.ModelProto, params: dict, int32_bias: bool, output_qdq: bool,
               unsigned: bool = False) -> onnx.ModelProto:
    """Quantise every Conv/Gemm whose weight initialiser ``<layer>.weight`` has params
    ``{layer: (input_scale, weight_scales)}``.

    ``unsigned`` stores the same symmetric int8 grid as uint8 with zero point 128 (q + 128):
    identical values, but ONNX Runtime then uses its U8U8 kernels, which do not saturate the
    16-bit intermediate sums that its U8S8 kernels can on AVX2 CPUs without VNNI.
    """
    qtype, shift = (np.uint8, 128) if unsigned else (np.int8, 0)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def quant_layer(node):
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1:
            layer = _layer_of(node.input[1])
            return layer if layer in params else None
        return None

    def next_input_scale(node):
        """Input scale of the next quantised layer, reached through pass-through ops only."""
        name = node.output[0]
        while True:
            users = consumers.get(name, [])
            if len(users) != 1:
                return None
            user = users[0]
            layer = quant_layer(user)
            if layer is not None and user.input[0] == name:
                return params[layer][0]
            if user.op_type not in PASS_THROUGH:
                return None
            name = user.output[0]

    new_inits = [numpy_helper.from_array(np.array(shift, qtype), "qdq/zero_point")]
    new_nodes = []
    removed = set()
    for node in graph.node:
        layer = quant_layer(node)
        if layer is None:
            new_nodes.append(node)
            continue
        s_in, s_w = params[layer]
        s_w = s_w.astype(np.float32)
        weight = numpy_helper.to_array(inits[node.input[1]])
        axis = 1 if node.op_type == "Gemm" and not _attr(node, "transB", 0) else 0
        shape = [1] * weight.ndim
        shape[axis] = -1
        w_q = (np.clip(np.rint(weight / s_w.reshape(shape)), -127, 127) + shift).astype(qtype)
        new_inits += [numpy_helper.from_array(np.array(s_in, np.float32), f"{layer}.input_scale"),
                      numpy_helper.from_array(w_q, f"{layer}.weight_int8"),
                      numpy_helper.from_array(s_w, f"{layer}.weight_scale"),
                      numpy_helper.from_array(np.full(len(s_w), shift, qtype), f"{layer}.weight_zero")]
        removed.add(node.input[1])
        new_nodes += [
            helper.make_node("QuantizeLinear", [node.input[0], f"{layer}.input_scale", "qdq/zero_point"],
                             [f"{layer}.input_q"], name=f"{layer}/input_quantize"),
            helper.make_node("DequantizeLinear", [f"{layer}.input_q", f"{layer}.input_scale",
                                                  "qdq/zero_point"], [f"{layer}.input_dq"],
                             name=f"{layer}/input_dequantize"),
            helper.make_node("DequantizeLinear", [f"{layer}.weight_int8", f"{layer}.weight_scale",
                                                  f"{layer}.weight_zero"], [f"{layer}.weight_dq"],
                             name=f"{layer}/weight_dequantize", axis=axis)]
        inputs = [f"{layer}.input_dq", f"{layer}.weight_dq"] + list(node.input[2:])
        if int32_bias and len(node.input) > 2:
            bias = numpy_helper.to_array(inits[node.input[2]])
            s_b = (np.float32(s_in) * s_w).astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                bias_q = np.rint(bias / s_b)
            if not np.all(np.abs(bias_q) < 2 ** 31 - 1):  # scales set before the floor above
                raise EdgeCalibError(f"layer {layer}: its bias does not fit in int32 at input "
                                     f"scale {s_in:.3g} x its weight scales; compress the "
                                     "float model again to reset the scales")
            new_inits += [numpy_helper.from_array(bias_q.astype(np.int32), f"{layer}.bias_int32"),
                          numpy_helper.from_array(s_b, f"{layer}.bias_scale"),
                          numpy_helper.from_array(np.zeros(len(s_b), np.int32), f"{layer}.bias_zero")]
            new_nodes.append(helper.make_node(
                "DequantizeLinear", [f"{layer}.bias_int32", f"{layer}.bias_scale", f"{layer}.bias_zero"],
                [f"{layer}.bias_dq"], name=f"{layer}/bias_dequantize", axis=0))
            removed.add(node.input[2])
            inputs[2] = f"{layer}.bias_dq"
        node.input[:] = inputs
        s_out = next_input_scale(node) if output_qdq else None
        new_nodes.append(node)
        if s_out is not None:
            out = node.output[0]
            node.output[0] = f"{layer}.output_float"
            new_inits.append(numpy_helper.from_array(np.array(s_out, np.float32), f"{layer}.output_scale"))
            new_nodes += [
                helper.make_node("QuantizeLinear", [f"{layer}.output_float", f"{layer}.output_scale",
                                                    "qdq/zero_point"], [f"{layer}.output_q"],
                                 name=f"{layer}/output_quantize"),
                helper.make_node("DequantizeLinear", [f"{layer}.output_q", f"{layer}.output_scale",
                                                      "qdq/zero_point"], [out],
                                 name=f"{layer}/output_dequantize")]
    kept = [i for i in graph.initializer if i.name not in removed]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
