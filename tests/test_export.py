"""ONNX export, Q/DQ, fusion and the deploy bundle, checked with ONNX Runtime on real images."""

import json

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edge_calib.deploy.bundle import open_bundle
from edge_calib.cli import main
from edge_calib.compress.pipeline import compress_classifier
from edge_calib.core.errors import EdgeCalibError
from edge_calib.export.onnx_graphs import (
    export_calibrator,
    export_classifier,
    fuse,
    read_metadata,
    simplify_float,
)
from edge_calib.models.int8 import count_qdq
from edge_calib.models.store import load_calibrator, load_classifier


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_float_graphs_match_torch_on_real_images(trained_dtn, trained_calibrator, digits):
    clf, cal = load_classifier(trained_dtn), load_calibrator(trained_calibrator)
    x = digits["usps_test"].batch(range(256), "cpu")
    cls_graph, cal_graph = export_classifier(clf), export_calibrator(cal)
    with torch.no_grad():
        calibrated = cal.module(x)
        logits = clf.module(calibrated)
        assert (calibrated - x).abs().max() > 1e-3  # a calibrator that really changes images
        raw_logits = clf.module(x)
    assert np.abs(run(cls_graph, x.numpy()) - raw_logits.numpy()).max() <= 1e-4
    assert np.abs(run(cal_graph, x.numpy()) - calibrated.numpy()).max() <= 1e-4
    fused = fuse(cal_graph, cls_graph, "usps")
    assert np.abs(run(fused, x.numpy()) - logits.numpy()).max() <= 1e-4
    separate = run(cls_graph, run(cal_graph, x.numpy()))
    assert np.abs(run(fused, x.numpy()) - separate).max() <= 1e-5
    meta = read_metadata(fused)
    assert meta["kind"] == "fused" and meta["fingerprint"] == clf.fingerprint
    assert json.loads(meta["input_spec"])["height"] == 32
    for graph in (cls_graph, cal_graph, fused):
        onnx.checker.check_model(graph)
        assert graph.opset_import[0].version == 13
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.slow
def test_int8_onnxruntime_agrees_with_fake_quant(int8_dtn, trained_dtn, digits):
    q, f = load_classifier(int8_dtn), load_classifier(trained_dtn)
    test = digits["mnist_test"]
    x = test.batch(np.arange(len(test)), "cpu")
    with torch.no_grad():
        fake = q.module(x).argmax(1).numpy()
    real = run(export_classifier(q, "onnxruntime"), x.numpy()).argmax(1)
    agreement = (fake == real).mean()
    assert agreement >= 0.99, agreement
    float_acc, int8_acc = q.metrics["float_acc"], q.metrics["compressed_acc"]
    assert float_acc == pytest.approx(float((f.module(x).argmax(1).numpy() == test.labels).mean() * 100))
    assert abs(float_acc - int8_acc) <= 1.0, (float_acc, int8_acc)
    assert q.compression["prune"]["pattern"] == "2:4" and q.fingerprint != f.fingerprint


def test_qdq_graphs(int8_dtn):
    q = load_classifier(int8_dtn)
    trt, ort_graph = export_classifier(q, "tensorrt"), export_classifier(q, "onnxruntime")
    assert count_qdq(trt) == 3 * 5  # input Q+DQ and weight DQ for 3 convs and 2 gemms
    zero_points = [i for i in trt.graph.initializer if i.name.endswith("zero") or "zero_point" in i.name]
    assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # TensorRT: zp 0
    assert all(onnx.numpy_helper.to_array(z).dtype == np.int8 for z in zero_points)
    assert count_qdq(ort_graph) > count_qdq(trt)  # int32 biases and output re-quantisation
    with pytest.raises(EdgeCalibError, match="refusing to run onnxsim"):
        simplify_float(trt)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(int8_dtn) + ".opt.onnx"
    ort.InferenceSession(ort_graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert "QLinearConv" in ops  # real INT8 kernels, not simulated


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_bundle_build_eval_and_refusals(int8_dtn, trained_dtn, trained_calibrator, tmp_path,
                                        shared_data, digits):
    out = tmp_path / "deploy"
    # a calibrator trained against the float DTN is refused for the INT8 one
    r = invoke("export", "--classifier", int8_dtn, "--calibrator", f"usps={trained_calibrator}",
               "--out", out, "--no-auto-domain")
    assert r.exit_code == 2 and "was trained against classifier" in r.output and not out.exists()
    r = invoke("export", "--classifier", trained_dtn, "--calibrator", f"usps={trained_calibrator}",
               "--calibrator", "mnist=identity", "--out", out, "--data-root", shared_data)
    assert r.exit_code == 0, r.output
    bundle = open_bundle(out)
    m = bundle.manifest
    assert m.classifier.precision == "fp32" and set(bundle.domains) == {"usps", "mnist"}
    assert m.task == "classification"
    assert m.domains["mnist"].calibrator is None
    assert m.domains["usps"].calibrator.trained_against == m.classifier.fingerprint
    assert m.domains["usps"].fused_check_max_abs <= 1e-4
    assert set(m.files) == {"classifier.onnx", "classifier.fp16.onnx", "calibrators/usps.onnx",
                            "calibrators/usps.fp16.onnx", "fused/usps.onnx",
                            "domain_classifier.json", "checks/inputs.npy", "source_pixels.json",
                            "source/stats.npz", "source/frames.npy"}
    assert m.source_pixels["file"] == "source_pixels.json"
    assert m.domain_classifier.holdout_accuracy > 90
    text = (out / "manifest.json").read_text()
    assert str(tmp_path) not in text and str(trained_dtn) not in text  # no workstation paths
    assert m.provenance["from"]["classifier"] == trained_dtn.name

    r = invoke("eval", "--deploy", out, "--domain", "usps", "--dataset", "usps", "--json",
               "--data-root", shared_data)
    through_bundle = json.loads(r.output)
    r = invoke("eval", "--classifier", trained_dtn, "--calibrator", trained_calibrator,
               "--dataset", "usps", "--json", "--data-root", shared_data)
    through_torch = json.loads(r.output)
    assert through_bundle["n"] == 2007
    assert abs(through_bundle["accuracy"] - through_torch["accuracy"]) <= 0.1
    r = invoke("eval", "--deploy", out, "--domain", "night", "--dataset", "usps")
    assert r.exit_code == 2 and "usps, mnist" in r.output

    before = (out / "manifest.json").read_bytes()
    r = invoke("export", "--classifier", trained_dtn, "--calibrator", "usps=identity",
               "--out", out)
    assert r.exit_code == 2 and "already exists" in r.output
    assert (out / "manifest.json").read_bytes() == before
    (out / "calibrators" / "usps.onnx").write_bytes(b"tampered")
    with pytest.raises(EdgeCalibError, match="does not match its sha256"):
        open_bundle(out)


def test_int8_bundle_through_cli(int8_dtn, tmp_path, shared_data):
    out = tmp_path / "deploy8"
    r = invoke("export", "--classifier", int8_dtn, "--calibrator", "mnist=identity",
               "--out", out, "--no-auto-domain")
    assert r.exit_code == 0, r.output
    m = open_bundle(out).manifest
    assert m.classifier.precision == "int8"
    assert m.classifier.files["tensorrt"] == "classifier.trt.onnx"
    assert m.classifier.sparsity > 0.45
    r = invoke("eval", "--deploy", out, "--dataset", "mnist", "--json", "--data-root", shared_data,
               "--max-samples", 2000)
    assert json.loads(r.output)["accuracy"] > 90


@pytest.mark.parametrize("args,message", [
    (["--precision", "int9"], "Invalid value for '--precision'"),
    (["--precision", "int8"], "needs an INT8 classifier"),
])
def test_bad_export_arguments(trained_dtn, tmp_path, args, message):
    r = invoke("export", "--classifier", trained_dtn, "--calibrator", "usps=identity",
               "--out", tmp_path / "b", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args,message", [
    (["--backend", "coreml"], "Invalid value for '--backend'"),
    (["--backend", "tensorrt"], "needs the 'tensorrt' Python package"),
    (["--profile", "jetson-tx1"], "unknown profile 'jetson-tx1'"),
])
def test_bad_build_engine_arguments(bundle_dir, args, message):
    before = (bundle_dir / "manifest.json").read_bytes()
    r = invoke("build-engine", "--deploy", bundle_dir, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("\n") == 1
    assert (bundle_dir / "manifest.json").read_bytes() == before


def test_old_build_engine_spelling_exports_with_a_notice(trained_dtn, tmp_path):
    r = CliRunner().invoke(main, ["build-engine", "--classifier", str(trained_dtn),
                                  "--calibrator", "usps=identity", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "note: exporting a bundle is now `edge-calib export`" in r.output
    assert open_bundle(tmp_path / "b").domains == ["usps"]


def test_corrupt_checkpoint_and_onnx(trained_dtn, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(trained_dtn.read_bytes()[:1000])
    r = invoke("export", "--classifier", bad, "--calibrator", "a=identity", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "corrupt or truncated" in r.output
    from edge_calib.deploy.ort_session import make_session
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(EdgeCalibError, match="ONNX Runtime cannot load it"):
        make_session(tmp_path / "bad.onnx")


def test_lenet_int8_graph_agrees_with_fake_quant(shared_data):
    """The grey 28x28 LeNet (max-pooling between conv and ReLU) through both Q/DQ variants."""
    from edge_calib.data import load_dataset
    from edge_calib.models.classifiers import build_classifier, default_input_spec
    from edge_calib.models.store import Classifier
    from edge_calib.train.tensors import DomainData

    torch.manual_seed(0)
    spec = default_input_spec("lenet")
    data = DomainData(load_dataset("mnist", "test", shared_data).subset(512), spec)
    clf = Classifier(build_classifier("lenet").eval(), "lenet", spec, 10, [str(i) for i in range(10)])
    q = compress_classifier(clf, "0.5", True, data, progress=False)
    x = data.batch(np.arange(512), "cpu")
    with torch.no_grad():
        fake = q.module(x).numpy()
    for target in ("onnxruntime", "tensorrt"):
        got = run(export_classifier(q, target), x.numpy())
        assert (got.argmax(1) == fake.argmax(1)).mean() >= 0.99, target
    assert q.compression["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_int32_bias_fits_when_a_layer_sees_almost_no_input():
    """A layer whose calibration inputs are almost zero (a squeeze-excitation input of an
    untrained network) gets an input scale so small that its bias overflows int32 at
    input_scale x max|w|/127: the weight scale is raised to |b| / (input_scale * 2^30) there
    and only there, and ONNX Runtime's int32-bias graph still agrees with fake quantisation."""
    from edge_calib.export.onnx_graphs import _export_quantisable
    from edge_calib.models.int8 import estimate_scales, quantize_layers

    torch.manual_seed(0)
    module = quantize_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(),
                                                 torch.nn.Conv2d(4, 2, 1))).eval()
    with torch.no_grad():
        module[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3, 5e-13]))
    batches = [1e-9 * torch.rand(2, 3, 4, 4) for _ in range(3)]
    estimate_scales(module, batches, method="max")
    first = module[0]
    plain = first.weight.detach().abs().reshape(4, -1).amax(1) / 127.0
    floor = first.bias.detach().abs() / (float(first.input_scale) * 2 ** 30)
    assert torch.equal(first.weight_scale, torch.maximum(plain, floor))
    assert (floor > plain).tolist() == [True, True, True, False]
    model = _export_quantisable(module, (3, 4, 4), "logits", True, "onnxruntime")
    biases = [numpy_helper.to_array(i) for i in model.graph.initializer
              if i.name.endswith(".bias_int32")]
    assert len(biases) == 2 and all(np.abs(b).max() <= 2 ** 30 for b in biases)
    x = batches[0][:1]
    with torch.no_grad():
        fake = module(x).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, fake, rtol=0, atol=1e-2 * np.abs(fake).max())
    with torch.no_grad():  # scales from before the floor (an old checkpoint): refused, one line
        first.weight_scale.copy_(plain)
    with pytest.raises(EdgeCalibError, match=r"layer 0: its bias does not fit in int32"):
        _export_quantisable(module, (3, 4, 4), "logits", True, "onnxruntime")
