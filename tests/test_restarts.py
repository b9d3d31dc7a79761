"""Restarts: several short starts, the one with the lowest unlabelled statistics distance
continues; the result is the run that start would have made alone, and an interrupted choice
resumes."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.models.checkpoint import load_checkpoint
from edge_calib.models.store import load_classifier
from edge_calib.train.calibrate import STATE, CalibratorConfig, CalibratorTrainer
from edge_calib.train.loop import state_paths
from edge_calib.train.restarts import chosen_trainer, start_paths
from edge_calib.train.source_stats import stats_distance


def config(**kw):
    return CalibratorConfig(**{"epochs": 3, "batch_size": 64, "arch": "curve",
                               "size": {"knots": 8}, "objective": "stats", "lr": 3e-3, "eps": 1.0,
                               "ema": 0.5} | kw)


@pytest.fixture
def make(trained_dtn, digits):
    clf = load_classifier(trained_dtn)
    source, target = digits["mnist_train"]._take(np.arange(512)), digits["usps_train"]._take(np.arange(256))

    def make_trainer(cfg, state, metrics, check_memory=True):
        return CalibratorTrainer(clf, source, target, cfg, torch.device("cpu"), state, metrics,
                                 check_memory=check_memory)
    return make_trainer, clf, target


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_chosen_start_continues_as_it_would_have_run_alone(make, tmp_path):
    make_trainer, clf, target = make
    cfg = config(restarts=3, restart_epochs=1)
    out = tmp_path / "usps.calib.pt"
    trainer = chosen_trainer(make_trainer, cfg, out, resume=False, progress=False)
    g, summary = trainer.run(progress=False)
    scores = summary.restarts
    assert [s["seed"] for s in scores] == [0, 1000, 2000]
    assert all(s["epochs"] == 1 for s in scores)
    distances = [s["stats_distance"] for s in scores]
    assert len(set(distances)) == 3  # the seeds do give different starts
    chosen = int(np.argmin(distances))
    assert trainer.cfg.restart == chosen and summary.epochs == 3
    # the score is the unlabelled criterion recomputed by hand on the start's calibrator
    alone = make_trainer(config(restarts=3, restart_epochs=1, restart=chosen),
                         *state_paths(tmp_path / "alone.pt"))
    alone.run(progress=False, until_epoch=1)
    assert stats_distance(clf.module, target, alone.stats, alone.deployed_G.eval(), 512) \
        == pytest.approx(distances[chosen], rel=1e-6)
    # ... and continued alone to the end it is the very calibrator the restarts gave
    g_alone, _ = alone.run(progress=False)
    for (name, a), b in zip(g.state_dict().items(), g_alone.state_dict().values()):
        assert torch.equal(a, b), name
    # files: the run's own state and log (3 epochs); no start states left; start logs kept
    state, metrics = state_paths(out)
    assert len(metrics.read_text().splitlines()) == 3
    assert load_checkpoint(state, STATE)[0]["restarts"] == scores
    for i in range(3):
        start_state, start_metrics = start_paths(out, i)
        assert not start_state.exists()
        assert start_metrics.exists() == (i != chosen)


def test_an_interrupted_choice_resumes_to_the_same_calibrator(make, tmp_path):
    make_trainer, _, _ = make
    cfg = config(restarts=2, restart_epochs=2)
    straight, _ = chosen_trainer(make_trainer, cfg, tmp_path / "a.calib.pt", False,
                                 False).run(progress=False)
    # killed after the first epoch of the second start
    out = tmp_path / "b.calib.pt"
    for i, epochs in ((0, 2), (1, 1)):
        make_trainer(config(restarts=2, restart_epochs=2, restart=i),
                     *start_paths(out, i)).run(progress=False, until_epoch=epochs)
    resumed = chosen_trainer(make_trainer, cfg, out, resume=True, progress=False)
    assert all(s["epochs"] == 2 for s in resumed.restarts)
    g, _ = resumed.run(progress=False)
    for (name, a), b in zip(straight.state_dict().items(), g.state_dict().values()):
        assert torch.equal(a, b), name
    # once the choice is made, --resume continues the chosen start without scoring again
    again = chosen_trainer(make_trainer, cfg, out, resume=True, progress=False)
    assert again.epoch == 3 and again.restarts == resumed.restarts


@pytest.mark.slow
def test_restart_options_on_the_command_line(trained_dtn, shared_data, tmp_path):
    out = tmp_path / "u.calib.pt"
    args = ["train", "--classifier", trained_dtn, "--source", "mnist", "--target", "usps",
            "--data-root", shared_data, "--domain", "usps", "--out", out, "--epochs", 2,
            "--max-samples", 128, "--batch-size", 64, "--calibrator-arch", "curve",
            "--calibrator-size", "small", "--objective", "stats", "--quiet"]
    invoke = lambda *extra: CliRunner().invoke(main, [str(a) for a in args + list(extra)])  # noqa
    r = invoke("--restarts", 2, "--restart-epochs", 2)
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1
    assert "--restart-epochs must be between 1 and --epochs - 1 (1), got 2" in r.output
    r = invoke("--restarts", 2)
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output.strip().splitlines()[-1])["restarts"]) == 2
    r = invoke("--restarts", 2)  # a state exists: one line, nothing touched
    assert r.exit_code != 0 and "pass --resume to continue or --force" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = invoke("--restarts", 2, "--force")
    assert r.exit_code == 0, r.output
