"""The calibrator's metrics log is written and read through one typed row
(``train/metrics_log.py``): the scores a benchmark reads are the ones the trainer wrote, and
logs written before the scores were named per task still read."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import random_classifier, random_domain

from edge_calib.core.errors import EdgeCalibError
from edge_calib.train.calibrate import CalibratorConfig, CalibratorTrainer
from edge_calib.train.loop import state_paths
from edge_calib.train.metrics_log import CalibratorEpoch, read_metrics_log

ROOT = Path(__file__).resolve().parents[1]


def test_the_trainers_log_reads_back_with_every_score(tmp_path):
    """A real run with a labelled source monitor, held-out frames and a target monitor: each
    row's scores come back typed, equal to the rows the trainer kept, and the digits benchmark's
    summary (which read the old key names and found nothing) gets the monitor curve."""
    cfg = CalibratorConfig(epochs=2, batch_size=16, arch="pointwise", eps=0.3, seed=3,
                           select="entropy", holdout=0.25)
    state, metrics = state_paths(tmp_path / "g.calib.pt")
    labelled = random_domain(40, seed=4, bright=40)
    trainer = CalibratorTrainer(random_classifier("dtn"), random_domain(48, seed=1, labelled=False),
                                random_domain(48, seed=2, bright=40, labelled=False), cfg,
                                torch.device("cpu"), state, metrics,
                                source_test=random_domain(40, seed=5), monitor=labelled)
    trainer.run(progress=False)
    rows = read_metrics_log(metrics)
    assert [r.epoch for r in rows] == [1, 2]
    for row, kept in zip(rows, trainer.history):
        assert row.to_dict() == kept
        assert row.source_split == "test" and row.source_score == kept["source_test_accuracy"]
        assert row.monitor_target == kept["monitor_target_test_accuracy"]
        assert row.holdout("entropy") == kept["holdout_entropy"] and row.holdout_stats >= 0
        assert {"loss_g", "loss_d_pixel", "delta_abs_mean"} <= set(row.values)
    spec = importlib.util.spec_from_file_location("digits_bench", ROOT / "benchmarks" / "digits.py")
    bench = importlib.util.module_from_spec(spec)
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    summary = bench.epoch_summary(metrics)
    assert summary["monitor_target_test_acc_per_epoch"] == [r.monitor_target for r in rows]
    assert summary["last5_monitor_target_test_acc"] is not None


def test_rows_of_older_logs_and_segmentation_rows():
    old = {"epoch": 3, "steps": 10, "time_s": 1.5, "loss_g": 0.7, "lr": 1e-4,
           "source_test_acc": 97.5, "monitor_target_test_acc": 61.0}
    row = CalibratorEpoch.from_dict(old)
    assert (row.source_split, row.source_score, row.monitor_target) == ("test", 97.5, 61.0)
    assert row.score_name == "accuracy" and row.values == {"loss_g": 0.7} and row.world_size == 1
    seg = CalibratorEpoch(epoch=1, steps=4, time_s=2.0, lr=3e-3, values={"loss_stats": 0.2},
                          score_name="miou", source_split="val", source_score=47.0,
                          holdout_stats=0.1)
    written = seg.to_dict()
    assert written["source_val_miou"] == 47.0 and "monitor_target_test_miou" not in written
    assert CalibratorEpoch.from_dict(written) == seg
    with pytest.raises(EdgeCalibError, match="no held-out entropy score"):
        seg.holdout("entropy")


def test_a_broken_log_is_one_line(tmp_path):
    log = tmp_path / "x.calib.metrics.jsonl"
    log.write_text(json.dumps({"epoch": 1, "steps": 2, "time_s": 1.0, "lr": 1e-4}) + "\n{oops\n")
    with pytest.raises(EdgeCalibError, match="line 2 is not JSON"):
        read_metrics_log(log)
    log.write_text(json.dumps({"epoch": 1, "time_s": 1.0, "lr": 1e-4}) + "\n")
    with pytest.raises(EdgeCalibError, match="a row has no 'steps'"):
        read_metrics_log(log)
