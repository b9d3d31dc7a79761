"""Data-parallel training under torchrun (real 2-process gloo jobs on the CPU) and the
many-domains job: the same calibrator as one process, one writer, resume after a kill with
another world size, one line per failing domain."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.models.store import load_calibrator

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
CLI = Path(sys.executable).parent / "edge-calib"


def torchrun(*args, nproc=2, **popen):
    """``torchrun --standalone --nproc-per-node N --no-python edge-calib ARGS`` (the README's
    recipe), or the worker script when ARGS starts with a .py file."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", str(nproc)]
    if str(args[0]).endswith(".py"):
        command = launch + [str(a) for a in args]
    elif CLI.exists():
        command = launch + ["--no-python", str(CLI)] + [str(a) for a in args]
    else:
        command = launch + ["-m", "edge_calib.cli"] + [str(a) for a in args]
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, text=True, capture_output=True, timeout=300)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def train_args(clf, data, out, epochs=2, *extra):
    """A short stats-objective run: USPS source, 256 MNIST target images, global batch 64."""
    return ("train", "--classifier", clf, "--source", "usps", "--target", "mnist",
            "--domain", "digits", "--data-root", data, "--out", out, "--epochs", epochs,
            "--max-samples", 256, "--batch-size", 64, "--objective", "stats",
            "--w-marginal", 1, "--w-entropy", 0.5, "--lr", "1e-3", "--device", "cpu", "--quiet",
            *extra)


def weights(path):
    return {k: v for k, v in load_calibrator(path).module.state_dict().items()
            if v.is_floating_point()}


def max_gap(a, b):
    return max((weights(a)[k] - weights(b)[k]).abs().max().item() for k in weights(a))


def test_helpers_and_single_writer_on_a_real_process_group(tmp_path):
    r = torchrun(HERE / "ddp_worker.py", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for i, seen in enumerate(ranks):
        assert seen["rank"] == i and seen["world_size"] == 2 and seen["backend"] == "gloo"
        assert seen["from_main"] == "computed on rank 0"
        # rank 1's loss is nan: the average is nan on both, so both stop with the same line
        assert seen["average"] == {"loss": None, "other": 0.5}
        assert "--batch-size 63 is the global batch" in seen["per_rank_error"]
        assert seen["history_world_size"] == [2]
    assert ranks[0]["shard"] == [0, 2, 4, 6] and ranks[1]["shard"] == [1, 3, 5, 7]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the calibrators equal
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["x.metrics.jsonl",
                                                                       "x.state.pt"]
    assert list((tmp_path / "rank1").iterdir()) == []


def test_two_processes_train_the_one_process_calibrator(trained_dtn, shared_data, tmp_path):
    one, two = tmp_path / "one" / "d.calib.pt", tmp_path / "two" / "d.calib.pt"
    one.parent.mkdir()
    two.parent.mkdir()
    r = invoke(*train_args(trained_dtn, shared_data, one))
    assert r.exit_code == 0, r.output
    r = torchrun(*train_args(trained_dtn, shared_data, two))
    assert r.returncode == 0, r.stderr[-2000:]
    printed = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["world_size"] == 2  # rank 0 alone reports
    assert sum(line.startswith('{"epoch"') for line in r.stderr.splitlines()) == 2
    assert sorted(p.name for p in two.parent.iterdir()) == [
        "d.calib.metrics.jsonl", "d.calib.pt", "d.calib.state.pt"]
    assert load_calibrator(two).meta.training.world_size == 2
    rows = [json.loads(line) for line in (two.parent / "d.calib.metrics.jsonl").open()]
    assert [row["world_size"] for row in rows] == [2, 2]
    # the global batch split over 2 ranks, moments and class marginal averaged over them,
    # gradients averaged by DDP: the one-process calibrator up to float rounding
    assert max_gap(one, two) < 1e-6


def test_kill_under_torchrun_then_resume_in_one_process(trained_dtn, shared_data, tmp_path):
    out = tmp_path / "k.calib.pt"
    job = torchrun(*train_args(trained_dtn, shared_data, out, 8), stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
    state = tmp_path / "k.calib.state.pt"
    deadline = time.monotonic() + 240
    while not state.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state.exists(), "no state written"
    job.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and not out.exists()
    stopped = [line for line in err.splitlines() if line.startswith("error: training stopped")]
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-2000:]
    assert "by SIGTERM" in stopped[0] and "continue with --resume" in stopped[0]
    r = invoke(*train_args(trained_dtn, shared_data, out, 8, "--resume"))
    assert r.exit_code == 0, r.output
    sizes = [json.loads(line)["world_size"] for line in (tmp_path / "k.calib.metrics.jsonl").open()]
    done = sizes.count(2)
    assert 1 <= done < 8 and sizes == [2] * done + [1] * (8 - done)
    assert load_calibrator(out).meta.training.world_size == 1
    plain = tmp_path / "plain.calib.pt"
    assert invoke(*train_args(trained_dtn, shared_data, plain, 8)).exit_code == 0
    assert max_gap(out, plain) < 1e-3  # float rounding, amplified by Adam over 32 steps


def camera_frames(folder, shared_data, n=48):
    """A folder of real USPS test digits saved as PNG frames (an unlabelled camera domain)."""
    import cv2

    from edge_calib.data import load_dataset

    folder.mkdir()
    for i, image in enumerate(load_dataset("usps", "test", shared_data).images[:n]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return folder


def test_many_domains_one_bad_folder(trained_dtn, shared_data, tmp_path):
    frames = camera_frames(tmp_path / "cam", shared_data)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "calibrators"
    r = invoke("train", "--classifier", trained_dtn, "--source", "mnist", "--data-root",
               shared_data, "--target", "usps", "--domain", "usps", "--target",
               tmp_path / "empty", "--domain", "broken", "--target", frames, "--domain", "cam",
               "--out", out, "--epochs", 1, "--max-samples", 64, "--batch-size", 32,
               "--device", "cpu", "--quiet")
    assert r.exit_code != 0
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: domain broken:") and "no images found" in errors[0]
    assert errors[-1] == "error: 1 of 3 domains failed (broken); the others were written"
    printed = [json.loads(line) for line in r.output.splitlines() if line.startswith("{\"out")]
    assert [p["domain"] for p in printed] == ["usps", "broken", "cam"]
    assert "error" in printed[1] and "fingerprint" in printed[0] and "fingerprint" in printed[2]
    assert sorted(p.name for p in out.glob("*.calib.pt")) == ["cam.calib.pt", "usps.calib.pt"]
    for name in ("usps", "cam"):
        assert load_calibrator(out / f"{name}.calib.pt").meta.domain == name


def test_many_domains_dealt_to_two_ranks(trained_dtn, shared_data, tmp_path):
    out = tmp_path / "job"
    frames = camera_frames(tmp_path / "cam", shared_data)
    r = torchrun("train", "--classifier", trained_dtn, "--source", "mnist", "--data-root",
                 shared_data, "--target", "usps", "--domain", "usps", "--target", frames,
                 "--domain", "cam", "--out", out, "--epochs", 1, "--max-samples", 64,
                 "--batch-size", 32, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    printed = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [p["domain"] for p in printed] == ["usps", "cam"]
    for name in ("usps", "cam"):
        meta = load_calibrator(out / f"{name}.calib.pt").meta
        assert meta.domain == name and meta.training.world_size == 1  # one rank each


@pytest.mark.parametrize("args,message", [
    (["--target", "usps", "--domain", "a", "--target", "mnist"],
     "give one --domain per --target (2 --target, 1 --domain)"),
    (["--target", "usps", "--domain", "a", "--target", "mnist", "--domain", "a"],
     "--domain a is given twice"),
    (["--target", "usps", "--domain", "unknown"], "reserved"),
])
def test_job_bad_inputs(trained_dtn, tmp_path, args, message):
    r = invoke("train", "--classifier", trained_dtn, "--source", "mnist", *args,
               "--out", tmp_path / "x.calib.pt")
    assert r.exit_code == 2 and message in r.output and len(r.output.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_out_folder_for_one_domain_and_launch_without_torchrun(trained_dtn, tmp_path,
                                                                monkeypatch):
    r = invoke("train", "--classifier", trained_dtn, "--source", "mnist", "--target", "usps",
               "--domain", "a", "--out", tmp_path)
    assert r.exit_code == 2 and "is a folder" in r.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    r = invoke("train", "--classifier", trained_dtn, "--source", "mnist", "--target", "usps",
               "--domain", "a", "--out", tmp_path / "x.calib.pt")
    assert r.exit_code == 2 and "launch with torchrun" in r.output
    assert torch.distributed.is_initialized() is False


def test_train_classifier_under_torchrun(shared_data, tmp_path):
    out = tmp_path / "usps_dtn.pt"
    r = torchrun("train-classifier", "--dataset", "usps", "--arch", "dtn", "--data-root",
                 shared_data, "--out", out, "--epochs", 1, "--max-samples", 512, "--batch-size",
                 64, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    printed = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["world_size"] == 2 and printed[0]["val_acc"] > 20
    assert sum(line.startswith('{"epoch"') for line in r.stderr.splitlines()) == 1
    from edge_calib.models.store import load_classifier

    clf = load_classifier(out)
    assert clf.metrics["world_size"] == 2 and clf.metrics["history"][0]["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usps_dtn.pt"]  # state removed
