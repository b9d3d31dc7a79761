"""INT8 calibrators: `edge-calib compress CAL --int8`, their Q/DQ graphs and INT8 bundles, on a
calibrator really trained against the INT8 DTN on real MNIST -> USPS images."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edge_calib.deploy.bundle import open_bundle
from edge_calib.cli import main
from edge_calib.export.onnx_graphs import export_calibrator
from edge_calib.models.int8 import QuantLayer, count_qdq
from edge_calib.models.store import load_calibrator, load_classifier


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def shallow_pair(int8_dtn, shared_data, tmp_path_factory):
    """(float, INT8) shallow calibrators: trained 1 epoch on 1000 images per domain against the
    INT8 DTN, then quantised through the CLI with scales from USPS training images."""
    folder = tmp_path_factory.mktemp("int8cal")
    cal, q = folder / "usps.calib.pt", folder / "usps_int8.calib.pt"
    r = invoke("train", "--classifier", int8_dtn, "--source", "mnist", "--target", "usps",
               "--domain", "usps", "--out", cal, "--epochs", 1, "--max-samples", 1000,
               "--calibrator-arch", "shallow", "--lr", "1e-3", "--quiet",
               "--data-root", shared_data)
    assert r.exit_code == 0, r.output
    r = invoke("compress", cal, "--int8", "--out", q, "--max-samples", 1000, "--quiet",
               "--data-root", shared_data)
    assert r.exit_code == 0, r.output
    return cal, q, json.loads(r.output.strip().splitlines()[-1])


def test_quantised_calibrator_checkpoint(shallow_pair, int8_dtn, digits):
    cal_path, q_path, report = shallow_pair
    cal, q = load_calibrator(cal_path), load_calibrator(q_path)
    layers = [m for m in q.module.modules() if isinstance(m, QuantLayer)]
    assert report["quantised_layers"] == len(layers) == 2  # the shallow medium's 2 convolutions
    assert report["calibration_dataset"] == "usps" and report["samples"] == 512
    assert q.int8 and not cal.int8 and q.fingerprint != cal.fingerprint
    assert q.meta.float_fingerprint == cal.fingerprint
    q.check_pairs_with(load_classifier(int8_dtn))  # still paired with its classifier
    x = digits["usps_test"].batch(range(256), "cpu")
    with torch.no_grad():
        changed = (q.module(x) - x).abs().max()
        error = (q.module(x) - cal.module(x)).abs().max()
        assert error <= 0.05 * changed, (error, changed)  # quantisation noise, not a new model
        assert (q.module(x) - x).abs().max() <= q.module.eps + 1e-6  # still bounded


def test_qdq_graphs_match_fake_quantisation(shallow_pair, digits):
    q = load_calibrator(shallow_pair[1])
    x = digits["usps_test"].batch(range(256), "cpu")
    with torch.no_grad():
        fake = q.module(x).numpy()
    trt, ort_graph = export_calibrator(q, target="tensorrt"), export_calibrator(q)
    assert count_qdq(trt) == 3 * 2  # input Q+DQ and weight DQ for each convolution
    assert count_qdq(ort_graph) > count_qdq(trt)  # int32 biases, re-quantised outputs
    for graph in (trt, ort_graph):
        diff = np.abs(run(graph, x.numpy()) - fake)
        # rounding boundaries move a few values by one quantisation step, no more
        assert np.mean(diff <= 1e-4) >= 0.99 and diff.max() <= 0.05, (diff.mean(), diff.max())
    with pytest.raises(Exception, match="no FP16 graph"):
        export_calibrator(q, half=True)


def test_int8_bundle_with_an_int8_calibrator(shallow_pair, int8_dtn, trained_dtn, tmp_path,
                                             shared_data):
    _, q_path, _ = shallow_pair
    out = tmp_path / "deploy"
    r = invoke("export", "--classifier", int8_dtn, "--calibrator", f"usps={q_path}",
               "--calibrator", "mnist=identity", "--no-auto-domain", "--out", out)
    assert r.exit_code == 0, r.output
    m = open_bundle(out).manifest
    entry = m.domains["usps"].calibrator
    assert entry.precision == "int8"
    assert entry.files == {"onnxruntime": "calibrators/usps.onnx",
                           "tensorrt": "calibrators/usps.trt.onnx"}
    assert m.domains["usps"].fused["tensorrt"] == "fused/usps.trt.onnx"
    deployed = json.loads(invoke("eval", "--deploy", out, "--domain", "usps", "--fused",
                                 "--dataset", "usps", "--json", "--data-root", shared_data).output)
    in_torch = json.loads(invoke("eval", "--classifier", int8_dtn, "--calibrator", q_path,
                                 "--dataset", "usps", "--json", "--data-root", shared_data).output)
    assert deployed["n"] == 2007
    assert abs(deployed["accuracy"] - in_torch["accuracy"]) <= 0.5, (deployed, in_torch)


def test_int8_calibrator_refusals(shallow_pair, trained_dtn, int8_dtn, trained_calibrator,
                                  tmp_path, shared_data):
    cal_path, q_path, _ = shallow_pair
    out = tmp_path / "x.calib.pt"
    cases = [
        (("compress", cal_path, "--prune", "2:4", "--int8"), "not pruned or fine-tuned"),
        (("compress", cal_path), "give --int8 to quantise a calibrator"),
        (("compress", q_path, "--int8"), "already INT8"),
    ]
    for args, message in cases:
        r = invoke(*args, "--out", out, "--data-root", shared_data)
        assert r.exit_code == 2 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not out.exists()
    # an INT8 calibrator needs an INT8 classifier in the bundle (paired with the float one
    # through a calibrator quantised from one trained against it)
    q_float = tmp_path / "float_paired_int8.calib.pt"
    r = invoke("compress", trained_calibrator, "--int8", "--max-samples", 500, "--out", q_float,
               "--quiet", "--data-root", shared_data)
    assert r.exit_code == 0, r.output
    bundle = tmp_path / "bundle"
    r = invoke("export", "--classifier", trained_dtn, "--calibrator", f"usps={q_float}",
               "--no-auto-domain", "--out", bundle)
    assert r.exit_code == 2 and "goes into a bundle whose classifier is INT8" in r.output
    assert not bundle.exists()
