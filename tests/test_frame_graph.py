"""Frame graphs (pre- and post-processing inside the network): ONNX Runtime parity with the
float path on real frames, for a classifier bundle and a hand-made BGR graph."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_calib.core.errors import EdgeCalibError
from edge_calib.core.spec import InputSpec
from edge_calib.data import load_dataset
from edge_calib.deploy.bundle import open_bundle
from edge_calib.deploy.ort_session import make_session
from edge_calib.engines import open_engines
from edge_calib.engines.frame_graph import CLASSES, CONFIDENCE, FRAME, frame_graph
from edge_calib.imaging.domain_features import softmax


def test_classifier_bundle_frame_graphs_match_the_float_graphs(bundle_dir, shared_data):
    """Every domain (fused usps, identity mnist, and None: the classifier alone) on real USPS
    and MNIST test frames: the logits bit for bit, the class and its softmax probability."""
    bundle = open_bundle(bundle_dir)
    u8 = np.concatenate([bundle.spec.resize_uint8(load_dataset(n, "test", shared_data).images[:16])
                         for n in ("usps", "mnist")])
    with open_engines(bundle, frames=True) as engines:
        for domain in (*bundle.domains, None):
            assert engines.takes_frames(domain)
            for i in range(len(u8)):
                logits, _ = engines.infer(domain, bundle.spec.normalize(u8[i:i + 1]))
                got, stage = engines.infer_frame(domain, u8[i:i + 1])
                assert int(got["classes"][0]) == int(logits.argmax())
                assert got["confidence"][0] == pytest.approx(softmax(logits).max(), abs=1e-6)
                assert set(stage) == {"network"}
            session = engines.frame_sessions[domain]
            both = session.run(["logits", CLASSES], {FRAME: u8[:1]})
            assert np.array_equal(both[0], engines.infer(domain, bundle.spec.normalize(u8[:1]))[0])


def test_released_float_sessions_leave_the_frame_graphs(bundle_dir, shared_data):
    """After the checks the runtime frees the float twins of its frame graphs: the frame
    graphs give the same classes as before, the float path is a one-line error, nothing of
    it stays open."""
    bundle = open_bundle(bundle_dir)
    u8 = bundle.spec.resize_uint8(load_dataset("usps", "test", shared_data).images[:8])
    with open_engines(bundle, frames=True) as engines:
        before = {d: engines.infer_frame(d, u8)[0]["classes"] for d in (*bundle.domains, None)}
        engines.release_float_sessions()
        assert engines.fused_sessions == {} and engines.classifier is None
        assert all(engines.calibrators[d] is None for d in bundle.domains)
        for domain in (*bundle.domains, None):
            assert np.array_equal(engines.infer_frame(domain, u8)[0]["classes"], before[domain])
            with pytest.raises(EdgeCalibError, match="float graph was released"):
                engines.infer(domain, bundle.spec.normalize(u8[:1]))


def test_runtime_engines_without_frames_keep_the_float_path(bundle_dir):
    with open_engines(open_bundle(bundle_dir)) as engines:
        assert not engines.takes_frames("usps") and not engines.frame_sessions


def conv_graph(opset: int = 13) -> onnx.ModelProto:
    """input (N, 3, 4, 5) -> a 1x1 convolution to 2 classes -> logits (N, 2, 4, 5)."""
    w = np.array([[1.0, -2.0, 0.5], [-1.0, 0.25, 3.0]], np.float32).reshape(2, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])], "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, 4, 5])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("order,opset", [("RGB", 13), ("BGR", 13), ("BGR", 9)])
def test_segmentation_frame_graph_takes_rgb_frames_whatever_the_spec_order(order, opset):
    spec = InputSpec(4, 5, 3, (0.1, 0.5, 0.9), (0.2, 0.3, 0.4), order)
    model = conv_graph(opset)
    u8 = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    float_session = make_session("conv", 0, model.SerializeToString())
    expected = float_session.run(None, {"input": spec.normalize(u8)})[0]
    wrapped = frame_graph(model, spec, "segmentation")
    session = make_session("conv.frame", 0, wrapped.SerializeToString())
    logits, classes = session.run(["logits", CLASSES], {FRAME: u8})
    assert np.array_equal(logits, expected)  # the same float32 operations as InputSpec.normalize
    assert classes.dtype == np.uint8 and np.array_equal(classes, expected.argmax(axis=1))


@pytest.mark.parametrize("opset", [13, 18])
def test_classifier_frame_graph_confidence_at_both_reducemax_forms(opset):
    spec = InputSpec(4, 5, 3, (0.5,) * 3, (0.5,) * 3)
    model = conv_graph(opset)
    # a classifier's logits are (N, K): pool the map first
    model.graph.node.append(helper.make_node("ReduceMean", ["logits"], ["pooled"], axes=[2, 3],
                                             keepdims=0) if opset < 18 else
                            helper.make_node("ReduceMean", ["logits", "pool_axes"], ["pooled"],
                                             keepdims=0))
    if opset >= 18:
        model.graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64),
                                                               "pool_axes"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT,
                                                            ["batch", 2]))
    u8 = np.random.default_rng(1).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    expected = make_session("pool", 0, model.SerializeToString()).run(
        None, {"input": spec.normalize(u8)})[0]
    session = make_session("pool.frame", 0,
                           frame_graph(model, spec, "classification").SerializeToString())
    classes, confidence = session.run([CLASSES, CONFIDENCE], {FRAME: u8})
    assert np.array_equal(classes, expected.argmax(axis=1))
    np.testing.assert_allclose(confidence, softmax(expected.astype(np.float64)).max(axis=1),
                               rtol=1e-6)


def test_frame_graph_refuses_a_graph_it_cannot_wrap():
    spec = InputSpec(4, 5, 3, (0.5,) * 3, (0.5,) * 3)
    model = conv_graph()
    model.graph.input.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, [1]))
    with pytest.raises(EdgeCalibError, match="expected one image input"):
        frame_graph(model, spec, "segmentation")
    with pytest.raises(EdgeCalibError, match="opset 6 is older than 7"):
        frame_graph(conv_graph(6), spec, "segmentation")


def curve_fused_graph(spec: InputSpec, matrix: int = 0, seed: int = 0) -> onnx.ModelProto:
    """A curve calibrator with random (not identity) weights fused in front of a 1x1
    convolution at the spec's size."""
    import torch

    from edge_calib.export.onnx_graphs import export_calibrator, fuse
    from edge_calib.models.calibrators import make_calibrator, parse_size
    from edge_calib.models.records import CalibratorRecord
    from edge_calib.models.store import Calibrator

    torch.manual_seed(seed)
    g = make_calibrator({"arch": "curve", **parse_size("curve", "small"), "matrix": matrix,
                         "eps": 0.5}, 3, spec.lo, spec.hi).eval()
    for p in g.parameters():
        torch.nn.init.normal_(p, std=0.3)
    cal = Calibrator(g, CalibratorRecord(domain="dusk", classifier_fingerprint="c" * 16,
                                         input_spec=spec, fingerprint="f" * 16))
    classifier = conv_graph()
    for value in (*classifier.graph.input, *classifier.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = spec.height, spec.width
    return fuse(export_calibrator(cal), classifier, "dusk")


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_curve_reads_its_table_index_from_the_uint8_frame(order, camvid_root):
    """The frame graph of a fused curve calibrator takes the table index from the frame's
    levels and normalises only the histogram sample: no full-frame normalisation is left, and
    the logits equal the float path's bit for bit on real CamVid frames and on random ones.
    With the colour matrix after the curve (which reads the normalised image) it is left as
    it was, and is still exact."""
    spec = InputSpec(90, 120, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), order)
    frames = spec.resize_uint8(load_dataset("camvid:dusk", "test", camvid_root).images[:4])
    noise = np.random.default_rng(0).integers(0, 256, (2, 90, 120, 3), dtype=np.uint8)
    for matrix in (0, 1):
        fused = curve_fused_graph(spec, matrix)
        wrapped = frame_graph(fused, spec, "segmentation")
        ops = [n.op_type for n in wrapped.graph.node]
        normalised_everywhere = any("input" in n.output for n in wrapped.graph.node)
        assert normalised_everywhere == bool(matrix)
        assert ("BatchNormalization" in ops) == bool(matrix)
        float_session = make_session("fused", 0, fused.SerializeToString())
        frame_session = make_session("fused.frame", 0, wrapped.SerializeToString())
        for u8 in (frames, noise):
            expected = float_session.run(None, {"input": spec.normalize(u8)})[0]
            logits, classes = frame_session.run(["logits", CLASSES], {FRAME: u8})
            assert np.array_equal(logits, expected), (order, matrix)
            assert np.array_equal(classes, expected.argmax(axis=1))


def test_an_index_that_does_not_give_back_the_levels_is_not_rewritten():
    """A BatchNormalization -> Clip -> Cast chain whose affine map is not the level's (here
    shifted by one level) keeps the normalised input: the rewrite is checked, not assumed."""
    spec = InputSpec(90, 120, 3, (0.5,) * 3, (0.5,) * 3)
    fused = curve_fused_graph(spec)
    bn = next(n for n in fused.graph.node if n.op_type == "BatchNormalization")
    bias = next(t for t in fused.graph.initializer if t.name == bn.input[2])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(1.0),
                                          bias.name))
    wrapped = frame_graph(fused, spec, "segmentation")
    assert "BatchNormalization" in [n.op_type for n in wrapped.graph.node]
    u8 = np.random.default_rng(1).integers(0, 256, (1, 90, 120, 3), dtype=np.uint8)
    expected = make_session("f", 0, fused.SerializeToString()).run(
        None, {"input": spec.normalize(u8)})[0]
    got = make_session("w", 0, wrapped.SerializeToString()).run(["logits"], {FRAME: u8})[0]
    assert np.array_equal(got, expected)
