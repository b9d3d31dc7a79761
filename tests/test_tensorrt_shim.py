"""The TensorRT path: everything that needs no GPU (version shim, precision plans and checks,
engine keys, profiles against what the runtime accepts, the doctor without TensorRT). Building
and running engines needs TensorRT and an NVIDIA GPU: that one test is skipped here."""

import importlib.util
import json
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.engines import BACKENDS
from edge_calib.engines.profiles import available_profiles, load_profile
from edge_calib.engines.tensorrt_backend import (
    TrtFeatures,
    check_precision,
    device_key,
    engine_key,
    import_tensorrt,
    parse_version,
    precision_plan,
)
from edge_calib.core.errors import EdgeCalibError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("version,supported,flags,strong", [
    ("8.2.1.8", False, True, False),   # JetPack 4.6: too old for Polygraphy's builder
    ("8.5.2", True, True, False),      # Xavier, JetPack 5
    ("10.3.0", True, True, False),     # Orin, JetPack 6
    ("11.1.0", True, False, True),     # pip today: strongly typed only
])
def test_version_shim(version, supported, flags, strong):
    f = TrtFeatures(parse_version(version))
    assert (f.supported, f.precision_flags, f.strongly_typed_only) == (supported, flags, strong)


def test_precision_plans():
    old, new = TrtFeatures((10, 3, 0)), TrtFeatures((11, 0, 0))
    assert precision_plan("fp16", old) == {"flags": ["FP16"], "classifier": "fp32",
                                           "calibrator": "fp32", "strongly_typed": False}
    assert precision_plan("int8", old)["flags"] == ["INT8", "FP16"]
    assert precision_plan("int8", old)["classifier"] == "qdq"
    assert precision_plan("fp16", new) == {"flags": [], "classifier": "fp16", "calibrator": "fp16",
                                           "strongly_typed": True}
    assert precision_plan("int8", new)["classifier"] == "qdq" and precision_plan("int8", new)["flags"] == []
    with pytest.raises(EdgeCalibError, match="unknown precision 'int4'"):
        precision_plan("int4", old)
    with pytest.raises(EdgeCalibError, match="unrecognised TensorRT version"):
        parse_version("latest")


def test_precision_a_bundle_can_honour():
    assert check_precision("int8", None) == "int8"
    assert check_precision("fp32", "fp16") == "fp16"
    with pytest.raises(EdgeCalibError, match="float: INT8 needs an INT8 bundle"):
        check_precision("fp32", "int8")
    with pytest.raises(EdgeCalibError, match="builds as int8, not fp16"):
        check_precision("int8", "fp16")


def test_engine_keys_change_with_everything_that_changes_a_plan():
    device = device_key("NVIDIA Jetson Orin Nano", (8, 7), "10.3.0")
    assert device == "nvidia-jetson-orin-nano_sm87_trt10.3.0"
    assert device != device_key("NVIDIA Jetson Orin Nano", (8, 7), "10.3.1")
    settings = {"precision": "int8", "fused": True, "sparse": True, "dla_core": None,
                "batch": [1, 1, 8], "workspace_mb": 512}
    onnx_sums = {"fused/dusk.trt.onnx": "a" * 64}
    base = engine_key(device, settings, onnx_sums)
    assert base == engine_key(device, dict(settings), dict(onnx_sums))  # deterministic
    changed = [engine_key(device, settings | {k: v}, onnx_sums) for k, v in
               [("precision", "fp16"), ("sparse", False), ("dla_core", 0), ("batch", [1, 2, 8]),
                ("workspace_mb", 256), ("fused", False)]]
    changed.append(engine_key(device, settings, {"fused/dusk.trt.onnx": "b" * 64}))
    changed.append(engine_key(device_key("Orin", (8, 7), "10.3.0"), settings, onnx_sums))
    assert len({base, *changed}) == len(changed) + 1


def test_every_shipped_profile_is_valid_and_runnable():
    """Each profile loads from the package data and asks for what build-engine and run
    accept: a backend run knows, a precision plan on each TensorRT version it names, fused or
    separate engines (run takes both)."""
    names = available_profiles()
    assert {"xavier-nx", "orin-nano", "agx-orin", "desktop-gpu", "cpu"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile["backend"] in BACKENDS
        assert isinstance(profile.get("fused", True), bool)
        if profile["backend"] == "tensorrt":
            for version in profile["tensorrt_versions"]:
                features = TrtFeatures(parse_version(version))
                assert features.supported, (name, version)
                precision_plan(profile["precision"], features)
            bundle_precision = "int8" if profile["precision"] == "int8" else "fp32"
            assert check_precision(bundle_precision, profile["precision"]) == profile["precision"]


@pytest.mark.parametrize("content,message", [
    ({"precision": "int4"}, "precision must be null (the bundle's) or one of fp32, fp16, int8"),
    ({"batch": [8, 1, 1]}, "batch must be [min, opt, max]"),
    ({"sparse": "yes"}, "sparse must be true or false"),
    ({"dla": 0}, "unknown key 'dla'"),
    (["not", "an", "object"], "a profile is a JSON object"),
])
def test_bad_profile_names_the_key(tmp_path, content, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(content))
    with pytest.raises(EdgeCalibError, match=re.escape(message)):
        load_profile(str(path))
    with pytest.raises(EdgeCalibError, match="unknown profile 'jetson-tx2'"):
        load_profile("jetson-tx2")


def test_missing_tensorrt_is_one_clear_error():
    if HAVE_TRT:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(EdgeCalibError, match="needs the 'tensorrt' Python package"):
        import_tensorrt()


def test_bundle_holds_every_tensorrt_variant(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    files = m["domains"]["usps"]["calibrator"]["files"]
    fp16 = onnx.load(str(bundle_dir / files["tensorrt_fp16"]))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert m["classifier"]["files"]["tensorrt_fp16"] == "classifier.fp16.onnx"
    assert m["engines"] == {}


def test_doctor_without_tensorrt_reports_what_is_missing(bundle_dir, tmp_path):
    if HAVE_TRT:
        pytest.skip("tensorrt is installed here")
    report = tmp_path / "doctor"
    r = CliRunner().invoke(main, ["doctor", "--deploy", str(bundle_dir), "--report", str(report),
                                  "--iterations", "5"])
    assert r.exit_code == 0, r.output
    data = json.loads((report / "doctor.json").read_text())
    assert data["ok"] is True and data["bundle"]["domains"] == ["usps", "mnist"]
    assert data["bundle"]["check_images"].startswith("8 (mnist test[:8])")
    assert data["software"]["tensorrt"].startswith("not available: ")
    assert "onnxruntime" in data["software"] and data["software"]["opencv"]["version"]
    assert data["tensorrt"]["not_available"] and data["tensorrt"]["ok"] is None
    for domain in ("usps", "mnist"):
        assert data["onnxruntime"]["latency_ms_batch1"][domain]["count"] == 5
    assert "not available" in (report / "doctor.md").read_text()


def test_doctor_names_a_broken_bundle(bundle_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "classifier.onnx").write_bytes(b"x")
    r = CliRunner().invoke(main, ["doctor", "--deploy", str(broken), "--report",
                                  str(tmp_path / "r")])
    assert r.exit_code == 1
    data = json.loads((tmp_path / "r" / "doctor.json").read_text())
    assert data["ok"] is False and "does not match its sha256" in data["problems"][0]


@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and an NVIDIA GPU (not available here)")
@pytest.mark.parametrize("fused", [True, False])
def test_build_and_run_engines_on_gpu(bundle_dir, tmp_path, fused):
    """Build with Polygraphy, run through the runtime's interface, agree with ONNX Runtime,
    reuse the cached engines for the same settings and rebuild for other ones."""
    import shutil

    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.engines import open_engines
    from edge_calib.engines.tensorrt_build import add_tensorrt_engines

    work = tmp_path / "b"
    shutil.copytree(bundle_dir, work)
    settings = {"precision": "fp32", "fused": fused}
    first = add_tensorrt_engines(work, settings)
    assert first["cached"] is False
    assert add_tensorrt_engines(work, settings)["cached"] is True
    bundle = open_bundle(work)
    x = bundle.check_inputs()
    with open_engines(bundle, "onnxruntime") as ort_engines, \
            open_engines(bundle, "tensorrt", fused=fused) as trt_engines:
        for domain in bundle.domains:
            expected = ort_engines.infer(domain, x)[0]
            got = np.concatenate([trt_engines.infer(domain, x[i:i + 1])[0] for i in range(len(x))])
            assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
            assert np.abs(got - expected).max() < 1e-2
    assert add_tensorrt_engines(work, settings | {"precision": "fp16"})["cached"] is False


class StandInRunner:
    """Polygraphy's TrtRunner interface (infer, get_input_metadata, last_inference_time,
    activate): TensorRT cannot run here, so this stand-in adds its ``offset`` to its input, which
    shows which engines a frame went through."""

    def __init__(self, offset: float):
        self.offset, self.is_active, self.calls = offset, False, 0

    def activate(self):
        self.is_active = True

    def deactivate(self):
        self.is_active = False

    def get_input_metadata(self):
        return {"x": None}

    def infer(self, feed, copy_outputs_to_host=True):
        self.calls += 1
        return {"y": feed["x"] + self.offset}

    def last_inference_time(self):
        return 0.001


def test_a_domain_named_classifier_keeps_its_calibrator_engine_apart():
    """The classifier's engine is not one of the domains': a domain called "classifier" runs its
    calibrator engine and then the classifier's (they shared one dict key before)."""
    from edge_calib.engines.tensorrt_backend import TrtEngines

    engines = TrtEngines.__new__(TrtEngines)  # without Polygraphy: stand-in runners
    engines.fused, engines.classifier = False, StandInRunner(1.0)
    engines.runners = {"classifier": StandInRunner(10.0)}
    x = np.zeros((1, 3, 2, 2), np.float32)
    logits, ms = engines.infer("classifier", x)
    assert float(logits.max()) == 11.0 and set(ms) == {"calibrator", "classifier", "network"}
    assert float(engines.infer("mnist", x)[0].max()) == 1.0  # an identity domain
    assert float(engines.calibrate("classifier", x).max()) == 10.0
    engines.close()
    assert engines.closed and engines.runners == {} and engines.classifier is None
