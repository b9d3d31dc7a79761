"""The pieces every training loop shares: the schedule recomputed by hand, the state-file rule,
the non-finite stop's line and the metrics log."""

import json
import math

import pytest
import torch

from edge_calib.core.errors import EdgeCalibError
from edge_calib.train.loop import check_states, log_epoch, non_finite, scheduler, state_paths


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_schedule_by_hand(schedule):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = scheduler(opt, schedule, total_steps=8)
    seen = []
    for _ in range(10):  # two steps past the end: the cosine stays at 0
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * (0.5 * (1 + math.cos(math.pi * min(t, 8) / 8)) if schedule == "cosine"
                       else 1.0) for t in range(10)]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_unknown_schedule_is_one_line():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(EdgeCalibError, match="unknown --schedule 'linear'"):
        scheduler(opt, "linear", 10)


def test_state_files_and_their_rule(tmp_path):
    state, metrics = state_paths(tmp_path / "usps.calib.pt")
    assert (state.name, metrics.name) == ("usps.calib.state.pt", "usps.calib.metrics.jsonl")
    check_states([state], resume=False, force=False)  # nothing saved: a fresh run
    with pytest.raises(EdgeCalibError, match="--resume: no training state at"):
        check_states([state], resume=True, force=False)
    state.write_bytes(b"x")
    with pytest.raises(EdgeCalibError, match="pass --resume to continue or --force"):
        check_states([state], resume=False, force=False)
    check_states([state], resume=True, force=False)
    check_states([state], resume=False, force=True)


def test_non_finite_stop_names_what_was_kept(tmp_path):
    first = non_finite(0, 2, "loss", "nan", tmp_path / "s.pt", "Try a lower --lr")
    assert str(first) == ("training stopped at epoch 1, step 3: the loss became non-finite (nan); "
                          "nothing was written. Try a lower --lr")
    later = non_finite(4, 0, "losses", "loss_g inf", tmp_path / "s.pt", "Try a lower --lr",
                       written=" and no calibrator was written")
    assert f"the last good state (epoch 4) is kept in {tmp_path / 's.pt'} and no calibrator" \
        in str(later)


def test_metrics_log_holds_the_whole_history(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    history = [{"epoch": 1, "loss": 0.123456}, {"epoch": 2, "loss": 0.1}]
    log_epoch(history[-1], history, path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == history
    assert json.loads(capsys.readouterr().err.strip()) == {"epoch": 2, "loss": 0.1}
