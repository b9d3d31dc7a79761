"""Bring your own frozen model: a network edge-calib did not define, exported to ONNX by its
owner, imported, calibrated and deployed with its file unchanged."""

import hashlib
import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from edge_calib.cli import main
from edge_calib.models.onnx_import import OnnxModule


class Block(nn.Module):
    """A residual block with a depthwise conv, batch norm and hardswish (MobileNet-like)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.dw = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x):
        return F.hardswish(self.dw(F.relu6(self.bn(self.conv(x))))) + self.skip(x)


class TheirNet(nn.Module):
    """Not one of ours: 64x64 RGB, ImageNet normalisation, max-pooling, squeeze-excite,
    softmax head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 5, 2, 2)
        self.blocks = nn.Sequential(Block(16, 32, 2), Block(32, 48, 2))
        self.se = nn.Linear(48, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = self.blocks(F.max_pool2d(F.relu(self.stem(x)), 2))
        x = x * torch.sigmoid(self.se(x.mean((2, 3))))[:, :, None, None]
        return torch.softmax(self.head(F.adaptive_avg_pool2d(x, 1).flatten(1)), 1)


def export(net, path, opset, dynamic=True):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), buf, dynamo=False,
                          opset_version=opset, input_names=["images"], output_names=["probs"],
                          dynamic_axes={"images": {0: "n"}} if dynamic else None)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def their_model(shared_data, tmp_path_factory):
    """TheirNet trained briefly (3 epochs of 4000 images, ~92%) on real MNIST upscaled to
    64x64, exported by its owner (opset 17, dynamic batch)."""
    from edge_calib.data import load_dataset
    from edge_calib.core.spec import InputSpec

    spec = InputSpec(64, 64, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train = load_dataset("mnist", "train", shared_data).subset(4000)
    x = torch.from_numpy(spec.preprocess(train.images))
    y = torch.from_numpy(train.labels)
    torch.manual_seed(0)
    net = TheirNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(3):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            loss = F.nll_loss(torch.log(net(x[idx]) + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    folder = tmp_path_factory.mktemp("theirs")
    return export(net, folder / "theirs.onnx", 17), spec


def test_every_operator_of_real_exports_matches_onnx_runtime(tmp_path):
    torch.manual_seed(1)
    net = TheirNet().eval()
    for opset, dynamic in ((11, True), (13, False), (17, True)):
        path = export(net, tmp_path / f"n{opset}.onnx", opset, dynamic)
        model = onnx.load(str(path))
        module = OnnxModule(model)
        x = np.random.default_rng(opset).normal(size=(1 if not dynamic else 3, 3, 64, 64))
        x = x.astype(np.float32)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"images": x})[0]
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
        assert np.abs(got - expected).max() <= 1e-4, opset
        if not dynamic:  # a fixed-batch export still trains on batches
            with torch.no_grad():
                assert module(torch.zeros(5, 3, 64, 64)).shape == (5, 10)


def test_a_fixed_batch_reshape_to_one_row_runs_at_any_batch():
    """A Chainer/PyTorch 1.x fixed-batch export flattens with the constant target [1, -1]: at
    a batch of 5 the 1 stands for the batch (before, it became -1 beside the -1, and training
    stopped); each frame's output equals ONNX Runtime's on that frame alone."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(4 * 8 * 8, 10)).astype(np.float32), "fc")
    target = numpy_helper.from_array(np.array([1, -1], np.int64), "target")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Reshape", ["c", "target"], ["flat"]),
         helper.make_node("MatMul", ["flat", "fc"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, fc, target])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    module = OnnxModule(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(5, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    expected = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(5)])
    assert got.shape == (5, 10) and np.abs(got - expected).max() <= 1e-4


def test_a_fixed_batch_graph_quantised_dynamically_matches_onnx_runtime(tmp_path):
    """ONNX Runtime's dynamic quantiser reshapes each Conv's bias to [1, -1, 1, 1] inside the
    graph. In a fixed-batch export that 1 is not the batch: the bias is a constant. (Before,
    the 32 biases of a depthwise layer became (32, 1, 1, 1), broadcast the batch to 32, and a
    later Add refused; the dynamically quantised MobileNetV2 stopped at import.)"""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(2)
    path = export(TheirNet().eval(), tmp_path / "fixed.onnx", 13, dynamic=False)
    quantize_dynamic(str(path), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    model = onnx.load(str(tmp_path / "dyn.onnx"))
    assert {"ConvInteger", "Reshape"} <= {n.op_type for n in model.graph.node}
    module = OnnxModule(model)
    session = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(3, 3, 64, 64)).astype(np.float32)
    expected = np.concatenate([session.run(None, {"images": x[i:i + 1]})[0] for i in range(3)])
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 10) and np.abs(got - expected).max() <= 1e-5


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_import_calibrate_deploy_unchanged(their_model, shared_data, tmp_path):
    path, spec = their_model
    (tmp_path / "labels.txt").write_text("\n".join(f"digit {i}" for i in range(10)))
    r = invoke("import-model", path, "--input-size", "64x64", "--mean", "0.485,0.456,0.406",
               "--std", "0.229,0.224,0.225", "--labels", tmp_path / "labels.txt",
               "--check-dataset", "mnist", "--data-root", shared_data, "--out", tmp_path / "t.pt")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output.strip().splitlines()[-1])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["onnx_sha256"] == digest and info["fingerprint"] == digest[:16]
    assert info["conversion_check"]["mnist"]["max_abs_diff"] <= 1e-4
    before = json.loads(invoke("eval", "--classifier", tmp_path / "t.pt", "--dataset", "mnist",
                               "--data-root", shared_data, "--max-samples", 1000, "--json").output)
    r = invoke("train", "--classifier", tmp_path / "t.pt", "--source", "mnist", "--target",
               "mnist:haze", "--domain", "haze", "--data-root", shared_data, "--out",
               tmp_path / "haze.calib.pt", "--epochs", 1, "--max-samples", 1000, "--batch-size",
               50, "--calibrator-arch", "thumbnail", "--lr", "3e-4", "--d-lr", "3e-4", "--quiet")
    assert r.exit_code == 0, r.output
    after = json.loads(invoke("eval", "--classifier", tmp_path / "t.pt", "--calibrator",
                              tmp_path / "haze.calib.pt", "--dataset", "mnist", "--data-root",
                              shared_data, "--max-samples", 1000, "--json").output)
    assert before["accuracy"] > 80  # a real, working source model
    assert after["accuracy"] >= before["accuracy"] - 1.0  # the source domain is not harmed
    r = invoke("export", "--classifier", tmp_path / "t.pt", "--calibrator",
               f"haze={tmp_path / 'haze.calib.pt'}", "--calibrator", "mnist=identity",
               "--no-auto-domain", "--data-root", shared_data, "--out", tmp_path / "bundle")
    assert r.exit_code == 0, r.output
    assert hashlib.sha256((tmp_path / "bundle/classifier.onnx").read_bytes()).hexdigest() == digest
    deployed = json.loads(invoke("eval", "--deploy", tmp_path / "bundle", "--domain", "haze",
                                 "--dataset", "mnist", "--data-root", shared_data,
                                 "--max-samples", 1000, "--json", "--fused").output)
    assert abs(deployed["accuracy"] - after["accuracy"]) <= 0.2


@pytest.mark.parametrize("args,message", [
    (["--input-size", "32x32"], "the model's input is 64x64, not --input-size 32x32"),
    (["--input-size", "64x64", "--mean", "0.5,0.5", "--std", "0.5,0.5"],
     "--mean has 2 values but the model takes 3 channels: give one --mean value per channel"),
    (["--input-size", "64x64", "--std", "0,1,1"], "std must be positive"),
    (["--input-size", "sixty"], "--input-size 'sixty': use HEIGHTxWIDTH"),
    (["--input-size", "64x64", "--task", "segmentation"], "a segmentation model gives"),
])
def test_bad_input_spec_is_one_line(their_model, tmp_path, args, message):
    path, _ = their_model
    r = invoke("import-model", path, *args, "--out", tmp_path / "x.pt")
    assert r.exit_code == 2 and message in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()


def test_unsupported_operator_is_named(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    node = helper.make_node("LpNormalization", ["x"], ["y"], axis=1)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "odd.onnx"))
    r = invoke("import-model", tmp_path / "odd.onnx", "--input-size", "8x8", "--out",
               tmp_path / "x.pt")
    assert r.exit_code == 2 and "cannot run for training: LpNormalization" in r.output
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    r = invoke("import-model", tmp_path / "junk.onnx", "--input-size", "8x8", "--out",
               tmp_path / "x.pt")
    assert r.exit_code == 2 and "not a valid ONNX model" in r.output


class Batchless(nn.Module):
    """A segmenter whose output drops the batch axis ([K, H, W]; exported at a fixed batch of
    1, as some Caffe-era and hand-written graphs are)."""

    def __init__(self, classes=11):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def forward(self, x):
        return self.body(x)[0]


@pytest.mark.parametrize("opset", [11, 13])  # Unsqueeze's axes: an attribute, then an input
def test_a_segmenter_without_a_batch_axis_imports_trains_and_deploys(opset, shared_data,
                                                                     tmp_path):
    """[K, H, W] at a fixed batch of 1 gains its batch axis at import (one Unsqueeze, said on
    stderr and in the summary) and then goes the whole way: ONNX Runtime's output equals the
    original graph's with the axis added, a calibrator trains one epoch against it, the bundle
    exports, and `eval --deploy` and `run` read it."""
    import cv2

    from edge_calib.data import load_dataset

    torch.manual_seed(0)
    path = tmp_path / "batchless.onnx"
    export(Batchless().eval(), path, opset, dynamic=False)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    original = ort.InferenceSession(str(path)).run(None, {"images": x})[0]
    assert original.shape == (11, 64, 64)
    r = invoke("import-model", path, "--task", "segmentation", "--check-dataset", "camvid:day", "--data-root", shared_data,
               "--out", tmp_path / "seg.pt")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["output_batch_axis_added"] and summary["output"] == "probs"
    assert "has no batch axis ([K, H, W] at a fixed batch of 1)" in r.stderr
    assert summary["conversion_check"]["camvid:day"]["max_abs_diff"] < 1e-4
    from edge_calib.models.store import load_classifier

    graph = load_classifier(tmp_path / "seg.pt").onnx_bytes
    np.testing.assert_array_equal(ort.InferenceSession(graph).run(None, {"images": x})[0],
                                  original[None])
    common = ["--data-root", shared_data]
    r = invoke("train", "--classifier", tmp_path / "seg.pt", "--source", "camvid:day",
               "--target", "camvid:dusk", "--domain", "dusk", "--calibrator-arch", "curve",
               "--epochs", 1, "--max-samples", 16, "--batch-size", 4, "--quiet",
               "--out", tmp_path / "dusk.calib.pt", *common)
    assert r.exit_code == 0, r.output
    r = invoke("export", "--classifier", tmp_path / "seg.pt", "--calibrator",
               f"dusk={tmp_path / 'dusk.calib.pt'}", "--calibrator", "day=identity",
               "--no-auto-domain", "--out", tmp_path / "bundle", *common)
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--deploy", tmp_path / "bundle", "--domain", "dusk", "--dataset",
               "camvid:dusk", "--split", "test", "--max-samples", 4, "--json", *common)
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.stdout)["miou"] <= 100
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(load_dataset("camvid:dusk", "test", shared_data).images[:3]):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    r = invoke("run", "--deploy", tmp_path / "bundle", "--input", frames, "--domain", "dusk",
               "--headless", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["frames"] == 3
