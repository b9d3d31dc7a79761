"""Explicit INT8 quantisation of an ONNX graph: QuantizeLinear / DequantizeLinear pairs.

TensorRT's explicit-quantisation pattern: Q/DQ on the activation input of every Conv/Gemm,
weights as int8 initialisers with a per-output-channel DequantizeLinear (axis 0), zero point 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

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
            new_inits += [numpy_helper.from_array(np.rint(bias / s_b).astype(np.int32), f"{layer}.bias_int32"),
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
