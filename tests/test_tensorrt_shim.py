"""The TensorRT path: everything that needs no GPU (version shim, precision plans, cache keys,
profiles, bundle variants). Building and running engines needs TensorRT and an NVIDIA GPU and
is skipped here with the reason."""

import importlib.util
import json

import onnx
import pytest

from edge_calib.engines.profiles import available_profiles, load_profile
from edge_calib.engines.tensorrt_backend import (
    TrtFeatures,
    cache_key,
    import_tensorrt,
    parse_version,
    precision_plan,
)
from edge_calib.errors import EdgeCalibError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("version,v3,pool,flags,strong,explicit", [
    ("8.2.1.8", False, False, True, False, True),     # Jetson Nano, JetPack 4.6
    ("8.5.2", True, True, True, False, True),         # Xavier, JetPack 5
    ("10.3.0", True, True, True, False, False),       # Orin, JetPack 6
    ("11.1.0", True, True, False, True, False),       # pip today
])
def test_version_shim(version, v3, pool, flags, strong, explicit):
    f = TrtFeatures(parse_version(version))
    assert (f.tensor_io_api, f.memory_pool_api, f.precision_flags, f.strongly_typed_only,
            f.explicit_batch_flag) == (v3, pool, flags, strong, explicit)


def test_precision_plans():
    old, new = TrtFeatures((10, 3, 0)), TrtFeatures((11, 0, 0))
    assert precision_plan("fp16", old) == {"flags": ["FP16"], "classifier": "fp32",
                                           "calibrator": "fp32", "strongly_typed": False}
    assert precision_plan("int8", old)["flags"] == ["INT8", "FP16"]
    assert precision_plan("int8", old)["classifier"] == "qdq"
    assert precision_plan("fp16", new) == {"flags": [], "classifier": "fp16", "calibrator": "fp16",
                                           "strongly_typed": True}
    assert precision_plan("int8", new)["classifier"] == "qdq" and precision_plan("int8", new)["flags"] == []
    assert precision_plan("fp32", new)["calibrator"] == "fp32"
    with pytest.raises(EdgeCalibError, match="unknown precision 'int4'"):
        precision_plan("int4", old)
    with pytest.raises(EdgeCalibError, match="unrecognised TensorRT version"):
        parse_version("latest")


def test_cache_keys_separate_gpus_and_versions():
    a = cache_key("NVIDIA Jetson Orin Nano", (8, 7), "10.3.0")
    assert a == "nvidia-jetson-orin-nano_sm87_trt10.3.0"
    assert a != cache_key("NVIDIA Jetson Orin Nano", (8, 7), "10.3.1")
    assert a != cache_key("Orin (nvgpu)", (8, 7), "10.3.0")


def test_profiles():
    assert {"jetson-nano", "xavier-nx", "orin-nano", "agx-orin", "desktop-gpu", "cpu"} <= set(available_profiles())
    nano = load_profile("jetson-nano")
    assert nano["tensorrt_versions"] == ["8.2"] and nano["precision"] == "fp16" and not nano["sparse"]
    assert load_profile("orin-nano")["sparse"] is True
    with pytest.raises(EdgeCalibError, match="unknown profile"):
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


@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and an NVIDIA GPU (not available here)")
def test_build_and_run_engines_on_gpu(bundle_dir, tmp_path):
    import shutil

    from edge_calib.bundle import open_bundle
    from edge_calib.engines import open_engines
    from edge_calib.engines.tensorrt_build import add_tensorrt_engines

    work = tmp_path / "b"
    shutil.copytree(bundle_dir, work)
    add_tensorrt_engines(work, {"precision": "fp32"})
    engines = open_engines(open_bundle(work), "tensorrt")
    import numpy as np
    logits, times = engines.infer("usps", np.zeros((1, 3, 32, 32), np.float32))
    assert logits.shape == (1, 10) and times["classifier"] > 0
