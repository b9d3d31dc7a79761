"""Static costs of an ONNX graph: parameters, multiply-accumulates, weight bytes, activations.

MACs are counted per output element from shapes (ONNX shape inference, batch 1):
Conv ``out * (C_in / groups) * kH * kW``; ConvTranspose ``in * (C_out / groups) * kH * kW``;
Gemm / MatMul ``M * N * K``. Element-wise and normalisation ops are not MACs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import shape_inference

QUANT_AUX = ("QuantizeLinear", "DequantizeLinear")


def _fix_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for value in list(m.graph.input) + list(m.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and (dims[0].dim_param or dims[0].dim_value == 0):
            dims[0].Clear()
            dims[0].dim_value = batch
    return m


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(_fix_batch(model), strict_mode=False)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[value.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _dtype_bytes(elem_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def graph_costs(model: onnx.ModelProto) -> dict:
    """{params, macs, weight_bytes, activation_bytes_total, activation_bytes_peak, macs_by_op}
    at batch 1. Parameters are the weights and biases of Conv/ConvTranspose/Gemm/MatMul (int8
    ones included), not Q/DQ scales, zero points or shape constants; weight bytes are theirs at
    their stored type. Activations exclude tensors computed from constants alone."""
    graph = model.graph
    shapes = _shapes(model)
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def source_initializer(name):  # the initialiser behind a weight input, through Q/DQ
        while name not in inits and name in producers and producers[name].op_type in QUANT_AUX:
            name = producers[name].input[0]
        return name if name in inits else None

    weights = {source_initializer(i) for n in graph.node
               if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") for i in n.input[1:]}
    weights.discard(None)
    params = sum(int(np.prod(inits[n].dims)) for n in weights)
    weight_bytes = sum(int(np.prod(inits[n].dims)) * _dtype_bytes(inits[n].data_type) for n in weights)
    macs, by_op = 0, {}
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        count = 0
        if node.op_type == "Conv" and out:
            w = shapes.get(node.input[1])
            if w:
                count = int(np.prod(out)) * w[1] * int(np.prod(w[2:]))
        elif node.op_type == "ConvTranspose":
            x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
            if x and w:  # weight (C_in, C_out / groups, kH, kW)
                count = int(np.prod(x)) * w[1] * int(np.prod(w[2:]))
        elif node.op_type in ("Gemm", "MatMul") and out:
            a = shapes.get(node.input[0])
            if a:
                k = a[0] if (node.op_type == "Gemm" and _attr(node, "transA", 0)) else a[-1]
                count = int(np.prod(out)) * k
        if count:
            macs += count
            by_op[node.op_type] = by_op.get(node.op_type, 0) + count
    act = _activation_memory(model, shapes, _constants(graph, set(inits)))
    return {"params": params, "macs": macs, "weight_bytes": weight_bytes, "macs_by_op": by_op, **act}


def _constants(graph, initializers: set) -> set:
    """Initialisers and every tensor computed from them alone (e.g. dequantised weights)."""
    const = set(initializers)
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(i in const or not i for i in node.input)):
            const.update(node.output)
    return const


def _activation_memory(model, shapes, initializers) -> dict:
    """Total bytes of all intermediate tensors, and the peak of live ones (each tensor lives
    from the node that produces it to its last consumer), float32, batch 1."""
    graph = model.graph
    last_use = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = i
    outputs = {o.name for o in graph.output}
    size = lambda n: 4 * int(np.prod(shapes[n])) if n in shapes else 0  # noqa: E731
    live, peak, total = {}, 0, 0
    for value in graph.input:
        if value.name not in initializers:
            live[value.name] = size(value.name)
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in initializers:
                live[name] = size(name)
                total += live[name]
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if last_use.get(name, -1) <= i and name not in outputs:
                del live[name]
    return {"activation_bytes_total": total, "activation_bytes_peak": peak}
