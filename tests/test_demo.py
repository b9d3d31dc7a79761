"""The README's main job, in its fast form, on the real digits; a second run reuses everything."""

import json

import pytest
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.models.families import DEFAULT_ARCH


@pytest.mark.slow
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


@pytest.mark.slow
def test_demo_camvid_end_to_end(camvid_root, tmp_path):
    """The CamVid demo's loop on the real frames, at the smallest settings (1 segmenter epoch at
    quarter scale, 1 calibrator epoch, 8 test frames scored per domain): every step's command
    and result kept, the mIoU table for source only, histogram matching and the calibrator,
    all the test frames streamed with --domain auto; a second run reuses every step."""
    from edge_calib.demos.camvid import CamvidDemoConfig, run_camvid_demo

    cfg = CamvidDemoConfig(tmp_path / "camvid", camvid_root, segmenter_epochs=1, train_scale=0.25,
                           calibrator_epochs=1, eval_frames=8, quiet=True)
    result = run_camvid_demo(cfg)
    miou = result["miou"]
    assert set(miou) == {"source only", "histogram matching", f"{cfg.arch} calibrator"}
    for row in miou.values():
        assert set(row) == {"dusk", "day"} and all(0 < v < 100 for v in row.values())
    stream = result["stream"]
    assert stream["frames"] == 62 + 171  # the dusk, then the day test frames
    assert stream["switches"] >= 1
    work = cfg.work
    for name in ("camvid_day.pt", "camvid_day_int8.pt", f"dusk.{cfg.arch}.calib.pt",
                 "bundle/manifest.json", "annotated.mp4", "predictions.jsonl",
                 "results/segmenter.json", "results/stream.json"):
        assert (work / name).exists(), name
    log = json.loads((work / f"dusk.{cfg.arch}.calib.metrics.jsonl").read_text()
                     .splitlines()[-1])
    # the calibrator's day monitor reads day *validation* frames (the test frames report
    # retention); the statistics objective and both extra terms of the recipe are logged
    assert cfg.arch == "curve"
    assert "source_val_miou" in log and "source_test_miou" not in log
    assert log["loss_stats"] > 0 and "loss_d_pixel" not in log
    assert log["loss_histogram"] > 0 and log["loss_consistency"] >= 0
    stamp = (work / "camvid_day.pt").stat().st_mtime_ns
    assert run_camvid_demo(cfg)["miou"] == miou
    assert (work / "camvid_day.pt").stat().st_mtime_ns == stamp


def test_demo_camvid_without_camvid(tmp_path):
    r = CliRunner().invoke(main, ["demo", "camvid", "--work", str(tmp_path / "w"),
                                  "--data-root", str(tmp_path)])
    assert r.exit_code == 2 and "demo camvid needs CamVid" in r.output
    assert not (tmp_path / "w").exists()


def test_camvid_demo_restarts_scale_with_the_epochs():
    """The demo's calibrator uses the recipe's restarts (15 of 80 epochs per start), scaled down
    for --fast and left out for a 1-epoch run (a start must be shorter than the run)."""
    from edge_calib.demos.camvid import restarts

    assert restarts(80) == ("--restarts", "3", "--restart-epochs", "15")
    assert restarts(10) == ("--restarts", "3", "--restart-epochs", "1")
    assert restarts(1) == ()
