"""The bundle contract: a typed, versioned manifest, every named file covered by a hash, the
manifest covered by its own; each way of breaking it is one clear line."""

import json
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from edge_calib.deploy.bundle import (
    MANIFEST,
    MANIFEST_HASH,
    Manifest,
    file_digest_bytes,
    open_bundle,
)
from edge_calib.cli import main
from edge_calib.core.errors import EdgeCalibError
from edge_calib.core.fileio import file_digest


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


def rewrite(bundle, edit, rehash=True):
    """Edit the manifest as JSON; ``rehash`` also updates manifest.sha256 (a deliberate edit)."""
    data = json.loads((bundle / MANIFEST).read_text())
    if edit(data) == "wrap in a list":  # the other edits change data in place
        data = [data]
    text = json.dumps(data, indent=2)
    (bundle / MANIFEST).write_text(text)
    if rehash:
        (bundle / MANIFEST_HASH).write_text(f"{file_digest_bytes(text.encode())}  {MANIFEST}\n")


def eval_line(bundle, shared_data):
    r = CliRunner().invoke(main, ["eval", "--deploy", str(bundle), "--dataset", "usps",
                                  "--domain", "usps", "--data-root", str(shared_data),
                                  "--max-samples", "50"])
    return r.exit_code, r.output


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["classifier"].pop("input_spec"), "classifier.input_spec: missing"),
    (lambda m: m["classifier"].pop("labels"), "classifier.labels: missing"),
    (lambda m: m["domains"]["usps"].pop("calibrator"), "domains.usps.calibrator: missing"),
    (lambda m: m["domains"]["usps"]["calibrator"].update(eps="0.5"),
     "domains.usps.calibrator.eps: expected a number, got a string"),
    (lambda m: m["classifier"].update(params="ten"), "classifier.params: expected a number, got a string"),
    (lambda m: m.update(domains=[]), "domains: expected an object, got a list"),
    (lambda m: "wrap in a list", "top level: expected an object, got a list"),
    (lambda m: m.update(default_domain="night"), "default_domain: 'night' is not one of the"),
    (lambda m: m.update(format_version=1), "rebuild the bundle with `edge-calib export`"),
    (lambda m: m.update(format_version=9), "upgrade edge-calib"),
    (lambda m: m["files"].pop("calibrators/usps.onnx"),
     "calibrators/usps.onnx is named in manifest.json but not covered by a sha256"),
    (lambda m: m["files"].update({"../outside.onnx": "0" * 64}), "points outside the bundle"),
])
def test_broken_manifests_are_one_line(bundle_copy, shared_data, edit, message):
    rewrite(bundle_copy, edit)
    with pytest.raises(EdgeCalibError, match=message.replace("(", r"\(").replace("[", r"\[")):
        open_bundle(bundle_copy)
    code, output = eval_line(bundle_copy, shared_data)
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1


def test_manifest_edited_without_its_hash(bundle_copy):
    rewrite(bundle_copy, lambda m: m["domains"]["usps"]["calibrator"].update(eps=0.9),
            rehash=False)
    with pytest.raises(EdgeCalibError, match="manifest.json does not match manifest.sha256"):
        open_bundle(bundle_copy)
    (bundle_copy / MANIFEST_HASH).unlink()
    with pytest.raises(EdgeCalibError, match="manifest.sha256 is missing"):
        open_bundle(bundle_copy)


def test_swapped_calibrator_is_caught_even_if_its_entry_is_removed(bundle_copy, shared_data):
    """The attack of the robustness issue: swap a graph, drop its hash entry."""
    other = onnx.load(str(bundle_copy / "calibrators/usps.onnx"))
    for init in other.graph.initializer:
        if init.float_data:
            init.float_data[0] += 0.5
        elif init.raw_data:
            init.raw_data = bytes(len(init.raw_data))
    onnx.save(other, str(bundle_copy / "calibrators/usps.onnx"))
    with pytest.raises(EdgeCalibError, match="does not match its sha256"):
        open_bundle(bundle_copy)
    rewrite(bundle_copy, lambda m: m["files"].pop("calibrators/usps.onnx"))
    code, output = eval_line(bundle_copy, shared_data)
    assert code == 2 and "not covered by a sha256" in output


def test_not_a_manifest(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(EdgeCalibError, match="unreadable"):
        open_bundle(bundle_copy)
    with pytest.raises(EdgeCalibError, match="is not a deploy bundle"):
        open_bundle(tmp_path)


def test_manifest_round_trip_and_no_nan(bundle_dir):
    data = json.loads((bundle_dir / MANIFEST).read_text())
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    assert set(manifest.files) == manifest.named_files()
    assert all(file_digest(bundle_dir / p) == h for p, h in manifest.files.items())
    data["domains"]["usps"]["calibrator"]["eps"] = float("nan")
    with pytest.raises(EdgeCalibError, match="not a finite number"):
        Manifest.from_dict(json.loads(json.dumps(data)))


@pytest.mark.parametrize("domain", ["../../victim/classifier", "/tmp/abs", "a/b", "..", "",
                                    "x" * 65, "night\nshift"])
def test_names_that_would_become_paths_are_refused(domain, trained_dtn, trained_calibrator,
                                                   tmp_path):
    """A domain name becomes calibrators/DOMAIN.onnx: anything but a safe name is one line,
    exit 2, and nothing is written anywhere (inside or outside --out)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "classifier.onnx").write_bytes(b"keep me")
    r = CliRunner().invoke(main, ["export", "--classifier", str(trained_dtn), "--calibrator",
                                  f"{domain}={trained_calibrator}", "--out",
                                  str(tmp_path / "deploy" / "new"), "--no-auto-domain"])
    assert r.exit_code == 2, r.output
    assert "is not a safe name" in r.output or "use DOMAIN=PATH" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert (victim / "classifier.onnx").read_bytes() == b"keep me"
    assert not (tmp_path / "deploy").exists() and not Path("/tmp/abs.onnx").exists()
    if domain:
        r = CliRunner().invoke(main, ["train", "--classifier", str(trained_dtn), "--source",
                                      "mnist", "--target", "usps", "--domain", domain, "--out",
                                      str(tmp_path / "x.calib.pt")])
        assert r.exit_code == 2 and "is not a safe name" in r.output
        assert not (tmp_path / "x.calib.pt").exists()


def test_two_exports_to_one_new_folder_never_replace_each_other(trained_dtn, trained_calibrator,
                                                                tmp_path):
    """Two real processes export to the same new --out without --force at once: one bundle
    lands whole, the other run fails in one line, nothing is silently replaced."""
    import subprocess
    import sys

    out = tmp_path / "deploy"
    args = [sys.executable, "-m", "edge_calib.cli", "export", "--classifier", str(trained_dtn),
            "--calibrator", f"usps={trained_calibrator}", "--no-auto-domain", "--quiet",
            "--out", str(out)]
    procs = [subprocess.Popen(args + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for extra in ([], [])]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    error = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(error) == 1 and ("already exists" in error[0] or "appeared while" in error[0])
    from edge_calib.deploy.bundle import open_bundle

    assert open_bundle(out).domains == ["usps"]  # whole, verified
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".deploy")]  # no leftovers


def rehash_files(bundle):
    """Re-hash every file the manifest names (a deliberate, consistent edit of the bundle)."""
    rewrite(bundle, lambda m: m["files"].update(
        {name: file_digest(bundle / name) for name in m["files"]}))


def test_a_calibrator_of_another_size_is_one_line(bundle_copy, shared_data):
    """A consistently hashed bundle whose calibrator returns 16x16 frames to a 32x32 classifier:
    eval, run and bench refuse it in one line before any session runs."""
    from onnx import TensorProto, helper

    path = bundle_copy / "calibrators" / "usps.onnx"
    old = onnx.load(str(path))
    inp, out = old.graph.input[0].name, old.graph.output[0].name
    graph = helper.make_graph(
        [helper.make_node("AveragePool", [inp], [out], kernel_shape=[2, 2], strides=[2, 2])],
        "half", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 3, 16, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    rehash_files(bundle_copy)
    message = "domain usps: the calibrator's output is 3x16x16 but the classifier takes 3x32x32"
    code, output = eval_line(bundle_copy, shared_data)
    assert code != 0 and message in output and len(output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["bench", "--deploy", str(bundle_copy), "--iterations", "2",
                                  "--report", str(bundle_copy.parent / "bench"), "--no-stream"])
    assert r.exit_code != 0 and message in r.output, r.output


def test_a_domain_classifier_that_disagrees_with_its_names_is_one_line(bundle_copy, domain_video):
    """The auto-domain model names one domain but scores two: refused before the first frame,
    not an IndexError mid-stream."""
    model = json.loads((bundle_copy / "domain_classifier.json").read_text())
    assert len(model["domains"]) == 2
    model["domains"] = model["domains"][:1]
    (bundle_copy / "domain_classifier.json").write_text(json.dumps(model))
    rewrite(bundle_copy, lambda m: m["domain_classifier"].update(domains=model["domains"]))
    rehash_files(bundle_copy)
    r = CliRunner().invoke(main, ["run", "--deploy", str(bundle_copy), "--input",
                                  str(domain_video[0]), "--domain", "auto", "--headless"])
    assert r.exit_code != 0
    assert "the domain classifier names 1 domains but its weights are shaped (50, 2)" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_a_forced_import_warns_when_run_starts(bundle_copy, domain_video):
    """A classifier imported with --force carries its warning in the manifest: run says it
    on start (before, only doctor did), and runs."""
    warning = "imported with --force although random inputs: max |difference| 0.5"
    rewrite(bundle_copy, lambda m: m["classifier"]["metrics"].update(conversion_warning=warning))
    r = CliRunner().invoke(main, ["run", "--deploy", str(bundle_copy), "--input",
                                  str(domain_video[0]), "--domain", "mnist", "--headless",
                                  "--max-frames", "5"])
    assert r.exit_code == 0, r.output
    assert f"warning: the bundle's classifier was {warning}" in r.stderr
