"""Torch -> ONNX for classifiers and calibrators, onnxsim on float graphs only, and fusion.

Conventions: one opset for every graph (13: per-channel Q/DQ, and parsed by TensorRT 8.2 on
the original Jetson Nano as well as by 8.5/10.x), static C x H x W, dynamic batch, input
``input``, outputs ``logits`` (classifier, fused) or ``output`` (calibrator). edge-calib
metadata travels in ``metadata_props`` under ``edge_calib.*`` keys.
"""

from __future__ import annotations

import copy
import io
import json
import warnings

import onnx
import torch
from onnx import compose

from ..core.errors import EdgeCalibError
from ..deploy.ort_session import graph_inputs, graph_io
from ..models.int8 import QuantLayer, count_qdq, insert_qdq, quant_params
from ..models.store import Calibrator, Classifier

OPSET = 13
INPUT, LOGITS, CALIBRATED = "input", "logits", "output"


def _torch_to_onnx(module: torch.nn.Module, shape: tuple[int, ...], output: str,
                   opset: int = OPSET) -> onnx.ModelProto:
    buffer = io.BytesIO()
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *shape),), buffer, dynamo=False,
                          opset_version=opset, input_names=[INPUT], output_names=[output],
                          dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def simplify_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim on a float graph. It folds weight DequantizeLinear nodes into FP32 constants, so
    it is never run on Q/DQ graphs: a graph with Q/DQ nodes, or a Q/DQ count that changes, is
    an error."""
    import onnxsim

    before = count_qdq(model)
    if before:
        raise EdgeCalibError(f"refusing to run onnxsim on a graph with {before} Q/DQ nodes")
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise EdgeCalibError("onnxsim could not validate the simplified graph")
    if count_qdq(simplified) != before:
        raise EdgeCalibError("onnxsim changed the number of Q/DQ nodes")
    return constants_to_initializers(simplified)


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes (scalars the exporter leaves, e.g. eps and clip bounds) become
    initialisers: the same graph with only computing nodes left."""
    kept = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def set_metadata(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key = f"edge_calib.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)
    return model


def read_metadata(model: onnx.ModelProto) -> dict:
    return {p.key[len("edge_calib."):]: p.value for p in model.metadata_props
            if p.key.startswith("edge_calib.")}


def export_classifier(clf: Classifier, target: str = "onnxruntime") -> onnx.ModelProto:
    """The classifier as deployed. INT8 classifiers get explicit Q/DQ pairs on the input of each
    Conv/Gemm (TensorRT's pattern); for ``onnxruntime`` biases are int32-quantised, each
    Conv/Gemm output is re-quantised with the next layer's input scale, and the int8 grid is
    stored as uint8 with zero point 128, so that ONNX Runtime fuses QLinearConv / QGemm kernels
    and takes its non-saturating U8U8 path. Both variants compute the same values as the torch
    fake-quant model up to rounding."""
    if target not in ("onnxruntime", "tensorrt"):
        raise EdgeCalibError(f"unknown export target {target!r}")
    if clf.onnx_bytes is not None:  # an imported model is deployed as the user gave it
        return imported_graph(clf)
    model = _export_quantisable(clf.module, clf.spec.shape, LOGITS, clf.int8, target)
    onnx.checker.check_model(model)
    return set_metadata(model, {"kind": "classifier", "fingerprint": clf.fingerprint,
                                "arch": clf.arch, "input_spec": clf.spec.to_dict(),
                                "labels": clf.labels, "precision": "int8" if clf.int8 else "fp32",
                                "target": target})


def _export_quantisable(module: torch.nn.Module, shape, output: str, int8: bool, target: str,
                        opset: int = OPSET) -> onnx.ModelProto:
    """A float graph simplified by onnxsim (fake quantisation switched off while exporting);
    ``int8``: then explicit Q/DQ for ``target`` from the module's scales (``insert_qdq``; for
    ``onnxruntime`` with int32 biases, re-quantised outputs and the uint8 grid)."""
    if target not in ("onnxruntime", "tensorrt"):
        raise EdgeCalibError(f"unknown export target {target!r}")
    layers = [m for m in module.modules() if isinstance(m, QuantLayer)]
    for m in layers:
        m.enabled = False
    try:
        model = _torch_to_onnx(module, shape, output, opset)
    finally:
        for m in layers:
            m.enabled = True
    model = simplify_float(model)
    if int8:
        params = quant_params(module)
        ort = target == "onnxruntime"
        model = insert_qdq(model, params, int32_bias=ort, output_qdq=ort, unsigned=ort)
        quantised = sum(n.op_type == "DequantizeLinear" and n.name.endswith("/weight_dequantize")
                        for n in model.graph.node)
        if quantised != len(params):
            raise EdgeCalibError(f"Q/DQ insertion quantised {quantised} of {len(params)} "
                                 "Conv/Gemm layers")
        nodes = count_qdq(model)
        if target == "tensorrt" and nodes != 3 * len(params):  # Q+DQ on the input, DQ weight
            raise EdgeCalibError(f"Q/DQ insertion produced {nodes} nodes, "
                                 f"expected {3 * len(params)}")
    return model


def imported_graph(clf: Classifier) -> onnx.ModelProto:
    """An imported model as deployed: the user's graph; an NHWC graph with one Transpose in
    front that takes the NCHW frames every other graph takes."""
    model = onnx.load_from_string(clf.onnx_bytes)
    if clf.graph_layout != "NHWC":
        return model
    original = graph_inputs(model.graph)[0]
    dims = [d.dim_value or d.dim_param or "batch" for d in original.type.tensor_type.shape.dim]
    name = INPUT if INPUT not in {n for node in model.graph.node for n in node.output} else \
        "nchw_input"
    nchw = onnx.helper.make_tensor_value_info(name, original.type.tensor_type.elem_type,
                                              [dims[0], dims[3], dims[1], dims[2]])
    transpose = onnx.helper.make_node("Transpose", [name], [original.name], perm=[0, 2, 3, 1],
                                      name="edge_calib/nchw_to_nhwc")
    model.graph.node.insert(0, transpose)
    model.graph.input.remove(original)
    model.graph.input.insert(0, nchw)
    onnx.checker.check_model(model)
    return model


def fusable(classifier: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """A copy of ``classifier`` that ``fuse`` can merge with a calibrator exported at ``opset``:
    an older opset converted up (onnx's version converter), IR version >= 7 and initialisers
    no longer listed as graph inputs (IR 3 exporters list them); an EdgeCalibError when the
    converter cannot (the bundle then runs the calibrator and the classifier as two graphs)."""
    from onnx import version_converter

    model = onnx.ModelProto()
    model.CopyFrom(classifier)
    if opset_of(model) < opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # the converter raises several types
            raise EdgeCalibError(f"opset {opset_of(classifier)} -> {opset}: "
                                 f"{str(exc).splitlines()[0][:160]}") from None
    kept = graph_inputs(model.graph)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 7)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several types
        raise EdgeCalibError(f"the converted graph is not valid ({str(exc).splitlines()[0][:160]})"
                             ) from None
    return model


def calibrator_opset(classifier: onnx.ModelProto) -> int:
    """Calibrators are exported at OPSET, or at the classifier's opset when it is newer."""
    return max(OPSET, opset_of(classifier))


def export_classifier_fp16(clf: Classifier) -> onnx.ModelProto:
    """A float classifier with FP16 inside and FP32 I/O (strongly typed TensorRT >= 11)."""
    model = simplify_float(_torch_to_onnx(_HalfPrecision(clf.module), clf.spec.shape, LOGITS))
    onnx.checker.check_model(model)
    return set_metadata(model, {"kind": "classifier", "fingerprint": clf.fingerprint,
                                "arch": clf.arch, "input_spec": clf.spec.to_dict(),
                                "labels": clf.labels, "precision": "fp16", "target": "tensorrt"})


def export_calibrator(cal: Calibrator, half: bool = False, opset: int = OPSET,
                      target: str = "onnxruntime") -> onnx.ModelProto:
    """The calibrator as a simplified float graph (``half``: FP16 inside, FP32 at the I/O, for
    strongly typed TensorRT >= 11; ``opset``: that of an imported classifier it is fused to);
    an INT8 calibrator gets Q/DQ pairs for ``target`` exactly as an INT8 classifier does."""
    spec_shape = (cal.module.config["channels"], cal.meta.input_spec.height,
                  cal.meta.input_spec.width)
    if half and cal.int8:
        raise EdgeCalibError("an INT8 calibrator has no FP16 graph")
    if half:
        model = simplify_float(_torch_to_onnx(_HalfPrecision(cal.module), spec_shape, CALIBRATED,
                                              opset))
    else:
        model = _export_quantisable(cal.module, spec_shape, CALIBRATED, cal.int8, target, opset)
    narrow_gather_indices(model)
    onnx.checker.check_model(model)
    precision = "int8" if cal.int8 else "fp16" if half else "fp32"
    return set_metadata(model, {"kind": "calibrator", "fingerprint": cal.meta.fingerprint,
                                "domain": cal.meta.domain or "", "eps": cal.module.eps,
                                "trained_against": cal.meta.classifier_fingerprint,
                                "precision": precision, "target": target})


def narrow_gather_indices(model: onnx.ModelProto) -> onnx.ModelProto:
    """Casts to int64 whose values only reach GatherElements as its indices (through
    Reshape/Flatten; Shape reads no values) cast to int32 instead: torch gathers with int64
    indices, ONNX takes either, and a per-pixel index tensor of half the bytes is cheaper to
    write and read."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, position))
    outputs = {o.name for o in model.graph.output}

    def index_tensors(name: str) -> list[str] | None:
        """``name`` and the reshaped copies of it, when its values only become indices."""
        if name in outputs or not readers.get(name):
            return None
        names = [name]
        for node, position in readers[name]:
            if node.op_type in ("Reshape", "Flatten") and position == 0:
                downstream = index_tensors(node.output[0])
                if downstream is None:
                    return None
                names += downstream
            elif not ((node.op_type == "GatherElements" and position == 1)
                      or node.op_type == "Shape"):
                return None
        return names

    narrowed = set()
    for node in model.graph.node:
        to = next((a for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to is not None and to.i == onnx.TensorProto.INT64:
            names = index_tensors(node.output[0])
            if names:
                to.i = onnx.TensorProto.INT32
                narrowed.update(names)
    kept = [v for v in model.graph.value_info if v.name not in narrowed]  # stale int64 types
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return model


class _HalfPrecision(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, x):
        return self.module(x.half()).float()


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)


def fuse(calibrator: onnx.ModelProto, classifier: onnx.ModelProto, domain: str) -> onnx.ModelProto:
    """One graph ``input -> calibrator -> classifier -> logits`` (onnx.compose.merge_models with
    prefixes; the same opset is required: calibrators are exported at the classifier's; the
    calibrator takes the classifier's IR version)."""
    if opset_of(calibrator) != opset_of(classifier):
        raise EdgeCalibError(f"cannot fuse: opsets differ ({opset_of(calibrator)} vs "
                             f"{opset_of(classifier)})")
    a, b = onnx.ModelProto(), onnx.ModelProto()
    a.CopyFrom(calibrator)
    b.CopyFrom(classifier)
    a.ir_version = b.ir_version
    meta = read_metadata(classifier)
    for m in (a, b):
        del m.metadata_props[:]
    inp, out = graph_io(b)
    merged = compose.merge_models(a, b, io_map=[(CALIBRATED, inp)],
                                  prefix1="calibrator/", prefix2="classifier/")
    _rename(merged, {f"calibrator/{INPUT}": INPUT, f"classifier/{out}": LOGITS})
    batch = next(v for v in b.graph.input if v.name == inp).type.tensor_type.shape.dim[0]
    if batch.dim_value > 0:  # a classifier with a fixed batch: the fused graph has it too
        first = merged.graph.input[0].type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_value = batch.dim_value
    onnx.checker.check_model(merged)
    return set_metadata(merged, meta | {"kind": "fused", "domain": domain,
                                        "calibrator_fingerprint": read_metadata(calibrator)["fingerprint"]})


def _rename(model: onnx.ModelProto, names: dict[str, str]) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in names:
            value.name = names[value.name]
    for node in model.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
