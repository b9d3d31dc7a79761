"""``edge-calib import-model``: a user's ONNX network as a frozen classifier checkpoint.

The file is checked (onnx checker; opset >= 7, what ONNX Runtime runs; one image input with 1
or 3 channels in NCHW or NHWC layout, fixed or dynamic batch; an output per class, or per class
and pixel for a segmenter), converted for training (``onnx_import.OnnxModule``) and the
conversion verified against ONNX Runtime on random inputs and, when given, real images. The
check gates the import: a conversion whose outputs differ from ONNX Runtime's by more than a
small share of their range, or whose top-1 disagrees on real images, is refused (``force``
imports it anyway and records the warning, which ``doctor`` and the bundle show). The
checkpoint carries the file byte for byte (embedded, where its weights were external); its
fingerprint is that file's sha256.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..core.errors import EdgeCalibError
from ..core.limits import check_input_pixels, limit
from ..core.spec import InputSpec
from ..deploy.ort_session import graph_inputs
from .onnx_import import BATCH_AXIS_ADDED
from .store import Classifier

MIN_OPSET = 7  # the oldest opset ONNX Runtime runs
# the conversion's largest |difference| to ONNX Runtime, as a share of the range of ONNX
# Runtime's outputs; a quantised graph may differ where float sums land on another side of
# a rounding boundary in some quantiser (one step of that activation)
TOLERANCE = {"float": 1e-4, "quantised": 2e-2}
MIN_TOP1 = 0.99  # top-1 agreement on real images
CHECK_IMAGES = 32
LAYOUTS = ("auto", "nchw", "nhwc")
def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@dataclass
class ImportRequest:
    """What the user says about their model (``None``: read it from the model)."""

    task: str = "classification"
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    colour_order: str = "RGB"
    layout: str = "auto"
    labels: list[str] | None = None
    force: bool = False
    output: str | None = None  # the graph output scored and calibrated for (None: the first)


def _external_data(model: onnx.ModelProto) -> set[str]:
    """The files beside the model that hold its weights (external data), if any."""
    from onnx.external_data_helper import uses_external_data

    files = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return files


def image_input(model: onnx.ModelProto, path) -> tuple[str, list[int | None]]:
    inputs = graph_inputs(model.graph)
    if len(inputs) != 1:
        raise EdgeCalibError(f"{path}: {len(inputs)} inputs; edge-calib needs exactly one image "
                             "input")
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise EdgeCalibError(f"{path}: input {inputs[0].name} is shaped {dims}; edge-calib needs "
                             "an image input (N, C, H, W) or (N, H, W, C)")
    return inputs[0].name, dims


def detect_layout(dims: list[int | None], asked: str, path) -> str:
    """NCHW when the second axis holds 1 or 3 channels, NHWC when the last does; ``asked``
    (nchw / nhwc) overrides, ``auto`` refuses what it cannot tell."""
    if asked not in LAYOUTS:
        raise EdgeCalibError(f"--layout {asked!r}: choose one of {', '.join(LAYOUTS)}")
    channels_first, channels_last = dims[1] in (1, 3), dims[3] in (1, 3)
    if asked == "auto":
        if not (channels_first or channels_last):
            raise EdgeCalibError(f"{path}: an input shaped {dims} has {dims[1]} channels in "
                                 f"NCHW layout and {dims[3]} in NHWC; edge-calib needs 1 or 3")
        if channels_first and channels_last:
            raise EdgeCalibError(f"{path}: cannot tell the layout of an input shaped {dims}; "
                                 "pass --layout nchw or --layout nhwc")
        asked = "nchw" if channels_first else "nhwc"
    channels = dims[1] if asked == "nchw" else dims[3]
    if channels not in (1, 3):
        raise EdgeCalibError(f"{path}: an input shaped {dims} has {channels} channels in "
                             f"{asked.upper()} layout; edge-calib needs 1 or 3"
                             + ("" if asked == "nhwc" else " (an NHWC model: pass --layout nhwc)"))
    return asked


def _output_rank(model: onnx.ModelProto) -> int | None:
    """The rank of the first output: declared, else from ONNX's shape inference (None when
    neither knows)."""
    for candidate in (model, None):
        if candidate is None:
            try:
                candidate = onnx.shape_inference.infer_shapes(model)
            except Exception:  # inference refuses some valid graphs
                return None
        value = candidate.graph.output[0].type.tensor_type
        if value.HasField("shape"):
            return len(value.shape.dim)
    return None


def with_batch_axis(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose first output ([K, H, W] from a graph at a fixed batch of 1) gains the
    batch axis in front through one Unsqueeze, keeping the output's name: what the graph
    produced is renamed ``NAME_unbatched`` inside. Marked in its metadata (``BATCH_AXIS_ADDED``)
    so the interpreter runs it one frame at a time, the only faithful way for such a graph."""
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph, out = model.graph, model.graph.output[0]
    inner = out.name + "_unbatched"
    for node in graph.node:
        node.input[:] = [inner if n == out.name else n for n in node.input]
        node.output[:] = [inner if n == out.name else n for n in node.output]
    for value in graph.value_info:
        if value.name == out.name:
            value.name = inner
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 13:  # axes became an input
        graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), inner + "_axes"))
        node = helper.make_node("Unsqueeze", [inner, inner + "_axes"], [out.name])
    else:
        node = helper.make_node("Unsqueeze", [inner], [out.name], axes=[0])
    graph.node.append(node)
    model.metadata_props.add(key=BATCH_AXIS_ADDED, value="1")
    if out.type.tensor_type.HasField("shape"):
        out.type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    return model


def per_channel(values: tuple[float, ...], channels: int, name: str) -> tuple[float, ...]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise EdgeCalibError(f"--{name} has {len(values)} values but the model takes {channels} "
                             f"channels: give one --{name} value per channel, or one for all")
    return values


def import_onnx(path: str | Path, request: ImportRequest,
                check_images: np.ndarray | None = None, check_name: str | None = None
                ) -> Classifier:
    from .int8 import count_qdq
    from .onnx_import import OnnxModule

    path = Path(path)
    if not path.is_file():
        raise EdgeCalibError(f"{path}: no such ONNX file")
    most = limit("EDGE_CALIB_MAX_MODEL_BYTES")
    if path.stat().st_size > most:
        raise EdgeCalibError(f"{path}: {path.stat().st_size:,} bytes is over the import limit of "
                             f"{most:,} ($EDGE_CALIB_MAX_MODEL_BYTES raises it)")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
        external = _external_data(model)
        total = len(data) + sum(os.path.getsize(path.parent / f) for f in external
                                if (path.parent / f).is_file())
        if total > most:
            raise EdgeCalibError(f"{path}: {total:,} bytes with its external data is over the "
                                 f"import limit of {most:,} ($EDGE_CALIB_MAX_MODEL_BYTES raises "
                                 "it)")
        if external:  # weights in files beside it: embedded, so the checkpoint and bundle
            model = onnx.load(str(path))  # carry (and hash) the whole model
            data = model.SerializeToString()
        onnx.checker.check_model(model)
    except EdgeCalibError:
        raise
    except Exception as exc:  # onnx raises several types for a broken file
        raise EdgeCalibError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    outputs = [o.name for o in model.graph.output]
    if request.output is not None and request.output != outputs[0]:
        if request.output not in outputs:
            raise EdgeCalibError(f"{path}: no output named {request.output!r} (it has "
                                 f"{', '.join(outputs)})")
        chosen = next(o for o in model.graph.output if o.name == request.output)
        others = [o for o in model.graph.output if o.name != request.output]
        del model.graph.output[:]
        model.graph.output.extend([chosen, *others])  # the first output is the one used
        data = model.SerializeToString()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise EdgeCalibError(f"{path}: opset {opset} is older than ONNX Runtime runs (>= "
                             f"{MIN_OPSET}); re-export the model with opset >= 11")
    name, dims = image_input(model, path)
    batch_axis_added = (request.task == "segmentation" and dims[0] == 1
                        and _output_rank(model) == 3)
    if batch_axis_added:  # [K, H, W] at a fixed batch of 1: the graph's output gets it back
        model = with_batch_axis(model)
        data = model.SerializeToString()
    layout = detect_layout(dims, request.layout, path)
    channels, hw = (dims[1], dims[2:]) if layout == "nchw" else (dims[3], dims[1:3])
    if request.size is None:
        if None in hw:
            raise EdgeCalibError(f"{path}: the model's input size is not fixed ({dims}): give "
                                 "--input-size HxW")
        size = tuple(hw)
    else:
        size = request.size
        if any(d is not None and d != want for d, want in zip(hw, size)):
            raise EdgeCalibError(f"{path}: the model's input is {hw[0]}x{hw[1]}, not "
                                 f"--input-size {size[0]}x{size[1]}")
    check_input_pixels(size[0], size[1], str(path))
    spec = InputSpec(size[0], size[1], channels, per_channel(request.mean, channels, "mean"),
                     per_channel(request.std, channels, "std"), request.colour_order)
    module = OnnxModule(model, layout).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    quantised = count_qdq(model) > 0 or any(
        n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
        for n in model.graph.node)
    report, classes = conversion_check(data, module, spec,
                                       dims[0] or (1 if module.per_frame else None),
                                       layout, check_images, check_name, path)
    expected_rank = 4 if request.task == "segmentation" else 2
    if report["random"]["output_rank"] != expected_rank:
        raise EdgeCalibError(f"{path}: output shaped {report['random']['output_shape']}: a "
                             f"{request.task} model gives "
                             f"{'(N, K, H, W)' if expected_rank == 4 else '(N, K)'}")
    failures = gate(report, "quantised" if quantised else "float")
    warning = None
    if failures:
        message = (f"{path}: the converted graph disagrees with ONNX Runtime ({'; '.join(failures)})"
                   "; calibrators trained on it would be trained against another model")
        if not request.force:
            raise EdgeCalibError(message + "; --force imports it anyway, with a warning")
        warning = f"imported with --force although {'; '.join(failures)}"
    labels = request.labels or [str(i) for i in range(classes)]
    if len(labels) != classes:
        raise EdgeCalibError(f"{path}: the model has {classes} outputs per sample, but "
                             f"{len(labels)} labels were given")
    metrics = {"imported_from": path.name, "onnx_sha256": hashlib.sha256(data).hexdigest(),
               "external_data_embedded": sorted(external) or None,
               "conversion_check": report, "int8_graph": quantised, "opset": module.opset,
               "ir_version": model.ir_version, "producer": model.producer_name or None,
               "graph_layout": layout.upper(), "conversion_warning": warning,
               "output": model.graph.output[0].name,
               "outputs": [o.name for o in model.graph.output],
               "output_batch_axis_added": batch_axis_added}
    return Classifier(module, "onnx", spec, classes, labels,
                      {"imported": True, "int8": quantised, "folded": False}, metrics, None, data,
                      request.task, graph_layout=layout.upper())


def conversion_check(data: bytes, module, spec: InputSpec, fixed_batch, layout, check_images,
                     check_name, path) -> tuple[dict, int]:
    """ONNX Runtime against the converted module on random inputs in the input range and on
    real images, both run on the same batches (``fixed_batch``, else 2; a graph that quantises
    each batch by its own range is given 1 by the caller, so the two see the same ranges): per
    input set the largest |difference|, that as a share of the range of ONNX Runtime's
    outputs, and the share of samples (or pixels) with the same top-1."""
    from ..deploy.ort_session import make_session, run_session

    session = make_session(path, model=data)  # ONNX Runtime's own warnings are not printed
    batch = fixed_batch or 2
    rng = np.random.default_rng(0)
    lo, hi = np.array(spec.lo).reshape(1, -1, 1, 1), np.array(spec.hi).reshape(1, -1, 1, 1)
    checks = {"random": (rng.uniform(0, 1, (2 * batch, *spec.shape)) * (hi - lo) + lo)
              .astype(np.float32)}
    if check_images is not None:
        count = max(batch, CHECK_IMAGES - CHECK_IMAGES % batch)
        checks[check_name or "images"] = spec.preprocess(check_images[:count])
    report = {}
    for name, x in checks.items():
        x = x[:len(x) - len(x) % batch]
        feed = x if layout == "nchw" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        try:
            reference = np.concatenate([run_session(session, feed[i:i + batch])
                                        for i in range(0, len(feed), batch)])
        except EdgeCalibError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EdgeCalibError(f"{path}: ONNX Runtime cannot run it on {name} inputs "
                                 f"({_first_line(exc)})") from None
        with torch.no_grad():
            got = torch.cat([module(torch.from_numpy(x[i:i + batch]))
                             for i in range(0, len(x), batch)]).numpy()
        if reference.shape != got.shape:
            raise EdgeCalibError(f"{path}: the converted graph gives {got.shape}, ONNX Runtime "
                                 f"{reference.shape}")
        diff = float(np.abs(reference - got).max())
        spread = float(reference.max() - reference.min()) if reference.size else 0.0
        report[name] = {"max_abs_diff": diff, "relative_diff": diff / max(spread, 1e-12),
                        "same_argmax": float((reference.argmax(1) == got.argmax(1)).mean()),
                        "real_images": name != "random", "output_rank": reference.ndim,
                        "output_shape": list(reference.shape)}
    return report, int(reference.shape[1])


def gate(report: dict, kind: str) -> list[str]:
    """What fails the conversion check: a relative difference above the tolerance on any input
    set, or top-1 agreement below MIN_TOP1 on real images. A quantised graph checked on real
    images is judged on them alone: random inputs push its activations past the ranges it was
    calibrated on, where the runtimes' saturation and rounding part ways (a 2:4 + INT8 CamVid
    segmenter at 360x480: 2.95% on random inputs, 1.7% and 99.87% of pixels' top-1 on real
    frames); the random inputs' figures stay in the report."""
    real = any(r["real_images"] for r in report.values())
    failures = []
    for name, r in report.items():
        if kind == "quantised" and real and not r["real_images"]:
            continue
        if not r["relative_diff"] <= TOLERANCE[kind]:
            failures.append(f"{name} inputs: max |difference| {r['max_abs_diff']:.3g}, "
                            f"{100 * r['relative_diff']:.3g}% of the output range (tolerance "
                            f"{100 * TOLERANCE[kind]:.3g}% for a {kind} graph)")
        if r["real_images"] and r["same_argmax"] < MIN_TOP1:
            failures.append(f"{name} images: top-1 agrees on {100 * r['same_argmax']:.1f}% "
                            f"(needs {100 * MIN_TOP1:.0f}%)")
    return failures
