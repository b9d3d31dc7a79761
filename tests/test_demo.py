"""The README's main job, in its fast form, on the real digits; a second run reuses everything."""

import json

from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.models.families import DEFAULT_ARCH


def test_demo_fast_end_to_end_and_reuse(shared_data, tmp_path):
    work = tmp_path / "demo"
    args = ["demo", "--work", str(work), "--data-root", str(shared_data), "--fast", "--json",
            "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    auto = result["results"]["auto (calibrated)"]
    assert set(auto["scores"]) == {"mnist", "colour"}
    assert auto["scores"]["colour"]["auto_frame_accuracy"] > 90
    plain = result["results"]["source only"]["scores"]["colour"]["accuracy"]
    assert auto["scores"]["colour"]["accuracy"] > plain + 10  # the calibrator's gain shows
    assert any(s["to"] == "colour" for s in auto["switches"])
    assert "Stream accuracy per true domain" in r.output and "Timing report" in r.output
    calibrator = f"colour.{DEFAULT_ARCH}.calib.pt"
    for name in ("mnist_dtn.pt", "mnist_dtn_int8.pt", calibrator,
                 f"bundle-colour-{DEFAULT_ARCH}/manifest.json", "stream-colour.avi",
                 "annotated_auto.avi", "predictions_auto.jsonl"):
        assert (work / name).exists(), name
    stamp = (work / calibrator).stat().st_mtime_ns
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.output.count("[reuse]") == 5
    assert (work / calibrator).stat().st_mtime_ns == stamp
