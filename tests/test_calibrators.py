"""The calibrator families: identity at start, the bound, ONNX parity, fusion, bad settings."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.core.errors import EdgeCalibError
from edge_calib.export.onnx_graphs import export_calibrator, export_classifier, fuse
from edge_calib.models.calibrators import FAMILIES, make_calibrator, parse_size
from edge_calib.models.records import CalibratorRecord
from edge_calib.models.store import Calibrator, build_calibrator, load_classifier
from edge_calib.core.spec import DIGITS_RGB32, InputSpec

IMAGENET = InputSpec(40, 56, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CASES = [(arch, size) for arch, cls in FAMILIES.items() for size in cls.PRESETS] + [
    ("curve", "knots=16,hidden=16,grid=4,matrix=1")]  # the curve followed by a colour matrix


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def randomised(arch, size, spec=DIGITS_RGB32, eps=0.5, std=0.5, seed=0):
    """A calibrator of ``arch``/``size`` whose weights are random (not the identity)."""
    torch.manual_seed(seed)
    g = make_calibrator({"arch": arch, **parse_size(arch, size), "eps": eps}, spec.channels,
                        spec.lo, spec.hi).eval()
    for p in g.parameters():
        torch.nn.init.normal_(p, std=std)
    return g


def as_calibrator(module, spec):
    return Calibrator(module, CalibratorRecord(domain="test", classifier_fingerprint="c" * 16,
                                               input_spec=spec, fingerprint="f" * 16))


@pytest.mark.parametrize("arch,size", CASES)
def test_untrained_calibrator_is_the_identity_on_real_images(arch, size, digits):
    x = digits["usps_test"].batch(range(64), "cpu")
    g = build_calibrator({"arch": arch, **parse_size(arch, size), "eps": 0.5,
                          "perturbation": "symmetric"}, DIGITS_RGB32).eval()
    with torch.no_grad():
        assert torch.equal(g(x), x)


@pytest.mark.parametrize("arch,size", CASES)
@pytest.mark.parametrize("spec", [DIGITS_RGB32, IMAGENET], ids=["digits", "imagenet-norm"])
def test_bound_holds_and_is_reached(arch, size, spec, digits):
    eps = 0.3
    g = randomised(arch, size, spec, eps=eps, std=3.0)  # saturates tanh
    x = torch.from_numpy(spec.preprocess(digits["mnist_test"].images[:16]))
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape
    assert (y - x).abs().max() <= eps + 1e-6
    lo, hi = torch.tensor(spec.lo).reshape(1, -1, 1, 1), torch.tensor(spec.hi).reshape(1, -1, 1, 1)
    assert (y >= lo - 1e-6).all() and (y <= hi + 1e-6).all()
    assert (y - x).abs().max() > 0.5 * eps  # the bound is reached, not trivially satisfied


@pytest.mark.parametrize("arch,size", CASES)
@pytest.mark.parametrize("spec", [DIGITS_RGB32, IMAGENET], ids=["digits", "imagenet-norm"])
def test_onnx_matches_torch(arch, size, spec, digits):
    g = randomised(arch, size, spec, std=0.3)
    x = spec.preprocess(digits["usps_test"].images[:8])
    graph = export_calibrator(as_calibrator(g, spec))
    with torch.no_grad():
        expected = g(torch.from_numpy(x)).numpy()
    assert np.abs(expected - x).max() > 1e-3  # it really changes the images
    assert np.abs(run(graph, x) - expected).max() <= 1e-4
    assert not any(n.op_type == "Constant" for n in graph.graph.node)
    if spec is DIGITS_RGB32 and arch != "curve":  # one bound for all channels: a single Clip
        # (the curve has no clamp at the end: its table of output levels stays in range)
        assert [n.op_type for n in graph.graph.node].count("Clip") == 1


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_fused_graph_equals_two_sessions(arch, trained_dtn, digits):
    clf = load_classifier(trained_dtn)
    g = randomised(arch, "small", std=0.3)
    cal_graph, cls_graph = export_calibrator(as_calibrator(g, clf.spec)), export_classifier(clf)
    x = digits["usps_test"].batch(range(128), "cpu").numpy()
    fused = run(fuse(cal_graph, cls_graph, "usps"), x)
    assert np.abs(fused - run(cls_graph, run(cal_graph, x))).max() <= 1e-5
    with torch.no_grad():
        assert np.abs(fused - clf.module(g(torch.from_numpy(x))).numpy()).max() <= 1e-4


def test_cost_of_the_cheap_families_does_not_depend_on_the_image_size():
    from edge_calib.bench.graphs import graph_costs

    small = as_calibrator(randomised("thumbnail", "medium"), DIGITS_RGB32)
    big_spec = InputSpec(360, 480, 3, (0.5,) * 3, (0.5,) * 3)
    big = as_calibrator(randomised("thumbnail", "medium", big_spec), big_spec)
    a, b = graph_costs(export_calibrator(small)), graph_costs(export_calibrator(big))
    assert a["params"] == b["params"] == 6572
    # the predictor's MACs are the same; only the per-pixel 3x3 colour matrix grows
    assert b["macs"] - a["macs"] == 9 * (360 * 480 - 32 * 32)


def test_size_settings():
    assert parse_size("resnet", None) == {"width": 8, "blocks": 9}
    assert parse_size("lowres", "factor=8") == {"factor": 8, "width": 16, "depth": 2}
    assert parse_size("pointwise", "small") == {"hidden": 16}
    assert parse_size("pointwise", "hidden=0") == {"hidden": 0}  # a plain colour matrix
    with pytest.raises(EdgeCalibError, match="has no size setting blocks; its settings are hidden"):
        parse_size("pointwise", "blocks=3")
    with pytest.raises(EdgeCalibError, match="factor must be an integer >= 2, got 1"):
        parse_size("lowres", "factor=1")
    with pytest.raises(EdgeCalibError, match="width must be an integer, got 'x'"):
        parse_size("shallow", "width=x")
    with pytest.raises(EdgeCalibError, match="unknown calibrator architecture 'unet'"):
        parse_size("unet", None)
    with pytest.raises(EdgeCalibError, match="eps must be a positive finite number"):
        make_calibrator({"arch": "pointwise", "eps": float("inf")}, 3, -1, 1)


@pytest.mark.parametrize("args,message", [
    (["--calibrator-arch", "unet"], "unknown calibrator architecture 'unet'"),
    (["--calibrator-arch", "thumbnail", "--calibrator-size", "grid=0"],
     "grid must be an integer >= 1, got 0"),
    (["--calibrator-arch", "shallow", "--blocks", "3"], "--blocks set the resnet calibrator's size"),
    (["--eps", "inf"], "--eps must be a positive finite number"),
    (["--lr", "-1"], "--lr must be a positive finite number"),
])
def test_bad_calibrator_options_are_one_line(args, message, trained_dtn, tmp_path):
    result = CliRunner().invoke(main, ["train", "--classifier", str(trained_dtn), "--source",
                                       "mnist", "--target", "usps", "--domain", "usps", "--out",
                                       str(tmp_path / "x.pt"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_one_bundle_carries_different_families_per_domain(trained_dtn, digits, tmp_path):
    """A spatial family for a shape shift and the light default for a colour shift, side by
    side in one bundle: each domain's fused graph runs its own calibrator."""
    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.engines import open_engines
    from edge_calib.models.store import save_calibrator

    clf = load_classifier(trained_dtn)
    modules = {"usps": randomised("resnet", "small", std=0.05, seed=1),
               "colour": randomised("thumbnail", "small", std=0.3, seed=2)}
    args = ["export", "--classifier", str(trained_dtn), "--out", str(tmp_path / "b"),
            "--precision", "fp32", "--no-auto-domain", "--quiet"]
    for domain, g in modules.items():
        save_calibrator(tmp_path / f"{domain}.calib.pt", g, CalibratorRecord(
            domain=domain, classifier_fingerprint=clf.fingerprint, input_spec=clf.spec,
            source="mnist", target=domain))
        args += ["--calibrator", f"{domain}={tmp_path / f'{domain}.calib.pt'}"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    bundle = open_bundle(tmp_path / "b")
    assert {d: bundle.domain(d).calibrator.arch for d in modules} == {"usps": "resnet",
                                                                      "colour": "thumbnail"}
    x = digits["usps_test"].batch(range(16), "cpu")
    with open_engines(bundle) as engines, torch.no_grad():
        for domain, g in modules.items():
            logits, _ = engines.infer(domain, x.numpy())
            assert np.abs(logits - clf.module(g(x)).numpy()).max() <= 1e-4, domain
