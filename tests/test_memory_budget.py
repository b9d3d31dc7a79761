"""The memory check before training: autograd's saved tensors counted by hand, the batch it
names, that it leaves training untouched, and real processes under a real address-space cap."""

import json
import math
import resource
import subprocess
import sys

import pytest
import torch

from edge_calib.core.errors import EdgeCalibError
from edge_calib.train.memory_budget import (BUDGET_VARIABLE, GROWTH, SLACK, StepMemory,
                                            batch_that_fits, saved_bytes, step_memory)


def test_saved_bytes_counts_each_saved_storage_once():
    x = torch.randn(7, 1000, requires_grad=True)
    w = torch.randn(1000, requires_grad=True)
    assert saved_bytes(lambda: torch.exp(x).sum()) == 7 * 1000 * 4  # exp keeps its output
    assert saved_bytes(lambda: (x * w).sum()) == x.nbytes + w.nbytes  # mul keeps both inputs
    assert saved_bytes(lambda: (x * x).sum()) == x.nbytes  # one storage saved twice
    with torch.no_grad():
        assert saved_bytes(lambda: torch.exp(x).sum()) == 0


def test_step_memory_is_the_line_through_two_batch_sizes():
    """exp(X W): mm keeps X (for W's gradient; X needs none), exp keeps its n x 50 output, so
    600 bytes per sample saved, GROWTH x 600 budgeted; the fixed part is W's gradient and
    Adam's two moments."""
    w = torch.nn.Parameter(torch.randn(100, 50))
    memory = step_memory(lambda n: torch.exp(torch.randn(n, 100) @ w).sum(), [w], (2, 5),
                         measure_peak=False)
    assert memory == StepMemory(fixed=3 * w.nbytes, per_sample=int(GROWTH * (100 + 50) * 4))
    assert memory.need(8) == 3 * w.nbytes + SLACK + 8 * int(GROWTH * 600)


def test_the_measured_peak_sees_what_saved_tensors_miss():
    """A backward that builds large temporaries it never saved: the product of x with a
    per-sample 1024 x 1024 matrix saves x and the matrix (8 MiB a sample) but its backward
    allocates more of them. The peak (VmHWM on this machine, read in a fresh process as
    training reads it: a long-lived one reuses pages it already holds) raises the estimate
    above the saved tensors' and leaves no gradient behind."""
    code = """
import json, torch
from edge_calib.train.memory_budget import step_memory
w = torch.nn.Parameter(torch.ones(1))
def forward_on(n):
    m = torch.randn(n, 1024, 1024) * w
    return (m @ m).mean()
saved = step_memory(forward_on, [w], (2, 4), measure_peak=False)
measured = step_memory(forward_on, [w], (2, 4))
print(json.dumps([saved.per_sample, measured.per_sample, w.grad is None]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    saved, measured, no_grad = json.loads(out.strip().splitlines()[-1])
    assert measured > saved >= int(GROWTH * 8 * 2**20) and no_grad


def test_the_batch_it_names_is_the_largest_that_fits(monkeypatch, capsys):
    memory, cpu = StepMemory(fixed=0, per_sample=1 << 20), torch.device("cpu")
    monkeypatch.setenv(BUDGET_VARIABLE, str(SLACK + 10 * (1 << 20)))
    assert batch_that_fits(memory, 10, cpu) == batch_that_fits(memory, 10, "cpu") == 10
    with pytest.raises(EdgeCalibError, match=r"^training at --batch-size 11 needs about 267 MiB "
                       r"\(1 MiB per image\), 266 MiB is left \(\$EDGE_CALIB_TRAIN_MEMORY\): "
                       r"try --batch-size 10$"):
        batch_that_fits(memory, 11, cpu)
    with pytest.raises(EdgeCalibError, match="try --batch-size 5$"):  # source + target images
        batch_that_fits(memory, 8, cpu, scale=2)
    # a batch left at its default is lowered instead, and the user is told
    assert capsys.readouterr().err == ""
    assert batch_that_fits(memory, 128, cpu, cap=True) == 10
    assert capsys.readouterr().err == (
        "note: the default --batch-size 128 needs about 384 MiB (1 MiB per image), 266 MiB is "
        "left ($EDGE_CALIB_TRAIN_MEMORY); training at --batch-size 10 (the largest that fits; "
        "give --batch-size to choose)\n")
    monkeypatch.setenv(BUDGET_VARIABLE, str(SLACK))
    for cap in (False, True):
        with pytest.raises(EdgeCalibError, match="even --batch-size 1 does not fit: train at a "
                                                 "smaller input size"):
            batch_that_fits(memory, 1, cpu, cap=cap)
    monkeypatch.setenv(BUDGET_VARIABLE, "lots")
    with pytest.raises(EdgeCalibError, match=r"\$EDGE_CALIB_TRAIN_MEMORY='lots'"):
        batch_that_fits(memory, 1, cpu)


def test_the_check_leaves_the_model_and_the_random_state_as_they_were():
    """Its forward passes run in training mode (BatchNorm would update its statistics) and the
    crops draw random numbers: both are put back, so a run is the same with the check."""
    from edge_calib.train.supervised import _step_memory
    from helpers import random_classifier, random_domain

    model = random_classifier("dtn", seed=3).module
    data = random_domain(6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    flip = lambda x, y: (x.flip(-1) if torch.rand(()) < 0.5 else x, y)  # noqa: E731
    memory = _step_memory(model, data, torch.nn.functional.cross_entropy, flip, "cpu")
    assert memory.per_sample > 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _train(args, cap, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "edge_calib.cli", "train-classifier", "--dataset", "mnist",
         "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--quiet", *args],
        capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))


def test_a_batch_over_the_address_space_is_refused_and_the_batch_named_trains(shared_data,
                                                                               tmp_path):
    """A real limit (RLIMIT_AS, as ``ulimit -v`` or a container without overcommit): 50,000
    MNIST digits in one batch is refused before the first step, in one line, nothing written;
    the batch it names then trains one step under the same limit."""
    cap = 3 << 30
    proc = _train(["--data-root", str(shared_data), "--batch-size", "50000"], cap, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training at --batch-size 50000 needs about ") and \
        "is left (address space left under ulimit -v): try --batch-size " in line, line
    assert list(tmp_path.iterdir()) == []
    batch = int(line.rsplit(" ", 1)[1])
    assert 100 <= batch < 50000
    samples = math.ceil(batch / 0.9) + 10  # a tenth is held out for validation
    proc = _train(["--data-root", str(shared_data), "--batch-size", str(batch),
                   "--max-samples", str(samples)], cap, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "m.pt").is_file()


def test_a_calibrator_batch_over_the_budget_is_refused_or_at_its_default_lowered(
        shared_data, tmp_path, monkeypatch):
    """The calibrator trainer runs the same check (a step holds a batch of source and one of
    target images): a --batch-size given is refused in one line with nothing written; left at
    its default it is lowered to a batch that fits, said once (the restarts
    train at the batch the first start settled), and the checkpoint records it."""
    from click.testing import CliRunner

    from edge_calib.cli import main
    from edge_calib.models.store import load_calibrator
    from helpers import random_classifier

    clf, out = tmp_path / "c.pt", tmp_path / "usps.calib.pt"
    random_classifier("dtn").save(clf)
    monkeypatch.setenv(BUDGET_VARIABLE, str(SLACK + (48 << 20)))

    def train(*batch):
        return CliRunner().invoke(main, [str(a) for a in (
            "train", "--classifier", clf, "--source", "mnist", "--target", "usps", "--domain",
            "usps", "--out", out, "--data-root", shared_data, "--max-samples", 256, "--epochs",
            2, "--restarts", 2, "--restart-epochs", 1, "--quiet", *batch)])

    r = train("--batch-size", 128)
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]  # after a note on the source statistics
    assert "Traceback" not in r.output
    assert line.startswith("error: training at --batch-size 128 needs "), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    batch = int(line.rsplit(" ", 1)[1])
    assert 1 <= batch < 128
    r = train()
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.output.splitlines() if ln.startswith("note: the default")]
    assert len(notes) == 1 and notes[0].endswith(
        "(the largest that fits; give --batch-size to choose)")
    # each run measures again, and resident memory is noisy at this model's 0.5 MB an image:
    # the batch it lowers to is near the one the refusal named, not always equal
    lowered = int(notes[0].split("training at --batch-size ")[1].split()[0])
    assert 1 <= lowered < 128
    meta = load_calibrator(out).meta
    assert meta.config["batch_size"] == meta.training.batch_size == lowered


def test_a_classifier_left_at_the_default_batch_trains_at_the_batch_that_fits(
        shared_data, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edge_calib.cli import main
    from edge_calib.models.store import load_classifier

    monkeypatch.setenv(BUDGET_VARIABLE, str(SLACK + (80 << 20)))
    r = CliRunner().invoke(main, [str(a) for a in (
        "train-classifier", "--dataset", "mnist", "--out", tmp_path / "m.pt", "--data-root",
        shared_data, "--epochs", 1, "--max-samples", 500, "--quiet")])
    assert r.exit_code == 0, r.output
    note = next(ln for ln in r.output.splitlines() if ln.startswith("note: the default"))
    batch = int(note.split("training at --batch-size ")[1].split()[0])
    assert 1 <= batch < 128
    assert load_classifier(tmp_path / "m.pt").metrics["batch_size"] == batch


def test_a_resumed_run_trains_at_the_batch_its_state_was_saved_with(shared_data, tmp_path,
                                                                    monkeypatch):
    """A run left at the default batch and lowered by the check, then resumed where memory has
    changed (here: all of it free), continues at the batch its state trained at: the settings
    match (no "settings differ" refusal) and every epoch's row names the same batch. The
    calibrator through ``train``; the classifier's loop through ``fit`` (``train-classifier``
    removes its state once it finishes)."""
    from click.testing import CliRunner

    from edge_calib.cli import main
    from edge_calib.models.store import load_calibrator
    from edge_calib.train.supervised import Fit, fit
    from helpers import random_classifier, random_domain

    clf, out = tmp_path / "c.pt", tmp_path / "usps.calib.pt"
    random_classifier("dtn").save(clf)
    model, data, state = random_classifier("dtn").module, random_domain(256), tmp_path / "s.pt"
    for resumed in (False, True):
        resume, epochs = (["--resume"], 2) if resumed else ([], 1)
        if not resumed:
            monkeypatch.setenv(BUDGET_VARIABLE, str(SLACK + (48 << 20)))
        r = CliRunner().invoke(main, [str(a) for a in (
            "train", "--classifier", clf, "--source", "mnist", "--target", "usps", "--domain",
            "usps", "--out", out, "--epochs", epochs, "--schedule", "constant", "--data-root",
            shared_data, "--max-samples", 256, "--quiet", *resume)])
        assert r.exit_code == 0, r.output
        if not resumed:
            monkeypatch.setenv(BUDGET_VARIABLE, str(SLACK + (80 << 20)))
        history = fit(model, data, Fit(epochs, 128, 1e-3), torch.nn.functional.cross_entropy,
                      "cpu", state_path=state, resume=resumed, progress=False, cap_batch=True)
        monkeypatch.delenv(BUDGET_VARIABLE, raising=False)
    calibrator = load_calibrator(out).meta
    assert calibrator.training.epochs == 2
    assert 1 <= calibrator.config["batch_size"] < 128
    assert len(history) == 2 and history[0]["batch_size"] == history[1]["batch_size"] < 128
