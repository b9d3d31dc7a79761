"""An imported graph's layer inputs (the taps ``OnnxModule`` records) computed by ONNX Runtime
instead of the interpreter: the same tensors, exposed as extra graph outputs, at ONNX Runtime's
speed. Recording source statistics needs no gradient, so it need not go through the
interpreter (``import-model --source`` took 79 s on a QDQ MobileNetV2 where the import alone
took 6 s).

Exposing a tensor as an output keeps ONNX Runtime from fusing it away (a DequantizeLinear
feeding a Conv stays a float DequantizeLinear and Conv), so the taps are the graph's own
arithmetic, as the interpreter computes it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, shape_inference

from ..core.errors import EdgeCalibError
from .onnx_import import OnnxModule


class OnnxTaps:
    """``run(x)`` -> (taps in the interpreter's order, first output), x NCHW float32 images;
    run one frame at a time where the interpreter does (``per_frame``) and in the graph's own
    batch where it is fixed."""

    def __init__(self, graph: bytes, module: OnnxModule):
        from ..deploy.ort_session import make_session

        model = onnx.load_from_string(graph)
        self.names = [module.nodes[i][1][0] for i in sorted(module.layer_nodes)]
        produced = {o for n in model.graph.node for o in n.output} | {module.input_name}
        missing = [n for n in self.names if n not in produced]
        if missing:
            raise EdgeCalibError(f"the graph has no tensor {missing[0]!r} to tap")
        try:
            typed = shape_inference.infer_shapes(model)
        except Exception:  # inference refuses some valid graphs: the taps are float then
            typed = model
        types = {v.name: v.type.tensor_type.elem_type for v in
                 (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)}
        present = {o.name for o in model.graph.output}
        for name in dict.fromkeys(self.names):
            if name not in present and name != module.input_name:
                model.graph.output.append(helper.make_tensor_value_info(
                    name, types.get(name) or onnx.TensorProto.FLOAT, None))
        self.first_output = model.graph.output[0].name
        self.session = make_session("the tapped graph", model=model.SerializeToString())
        self.input_name = module.input_name
        self.channels_last = module.channels_last
        self.batch = 1 if module.per_frame else module.fixed_batch
        # the outputs asked for: the first, then each tapped tensor once (the input is fed)
        self.wanted = [self.first_output, *(n for n in dict.fromkeys(self.names)
                                            if n != self.input_name)]

    def run(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if self.channels_last else x
        step = self.batch or len(feed)
        parts = [self.session.run(self.wanted, {self.input_name: feed[i:i + step]})
                 for i in range(0, len(feed), step)]
        values = {name: np.concatenate([p[k] for p in parts])
                  for k, name in enumerate(self.wanted)}
        values[self.input_name] = feed
        return [values[n] for n in self.names], values[self.first_output]
