"""No command writes over the files it reads (issue 35, item 4): an output that is an input,
by the same path or through a hard link, is one line and the input is left byte for byte;
export --force replaces only a bundle; train does not replace a calibrator without --force; two
processes writing one output: the second is refused before it writes anything."""

import os
import shutil
import subprocess
import sys
import time

from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.core.fileio import file_digest


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(r, words):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    return lines[0]


def test_checkpoints_and_models_are_not_written_over(trained_dtn, shared_data, tmp_path):
    model = tmp_path / "m.pt"
    shutil.copy(trained_dtn, model)
    link = tmp_path / "link.pt"
    os.link(model, link)
    before = file_digest(model)
    one_line(invoke("compress", model, "--int8", "--calib-dataset", "mnist", "--out", model,
                    "--data-root", shared_data), f"--out {model} is the CHECKPOINT it reads")
    line = one_line(invoke("compress", model, "--int8", "--calib-dataset", "mnist", "--out", link,
                           "--data-root", shared_data), "another name for the same file")
    assert "link.pt" in line
    one_line(invoke("train", "--classifier", model, "--source", "mnist", "--target", "usps",
                    "--domain", "usps", "--out", link, "--epochs", 1, "--force",
                    "--data-root", shared_data), "is the --classifier it reads")
    assert file_digest(model) == before


def test_an_imported_model_is_not_written_over(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 13)]), str(path))
    before = file_digest(path)
    one_line(invoke("import-model", path, "--out", path), "is the MODEL it reads")
    assert file_digest(path) == before


def test_run_does_not_write_its_video_or_log_over_its_input(bundle_dir, domain_video, tmp_path):
    video = tmp_path / "v.avi"
    shutil.copy(domain_video[0], video)
    before = file_digest(video)
    for option in ("--output", "--predictions"):
        one_line(invoke("run", "--deploy", bundle_dir, "--input", video, "--domain", "usps",
                        "--headless", option, video), f"{option} {video} is the --input it reads")
    assert file_digest(video) == before


def test_export_force_replaces_only_a_bundle(trained_dtn, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    one_line(invoke("export", "--classifier", trained_dtn, "--calibrator", "a=identity",
                    "--out", folder, "--force", "--no-auto-domain", "--quiet"),
             "--force replaces only a bundle")
    assert (folder / "notes.txt").read_text() == "mine"
    r = invoke("export", "--classifier", trained_dtn, "--calibrator", "a=identity", "--out",
               tmp_path / "b", "--no-auto-domain", "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("export", "--classifier", trained_dtn, "--calibrator", "b=identity", "--out",
               tmp_path / "b", "--force", "--no-auto-domain", "--quiet")
    assert r.exit_code == 0, r.output  # a bundle is replaced


def test_train_does_not_replace_a_calibrator_without_force(trained_dtn, trained_calibrator,
                                                          shared_data, tmp_path):
    out = tmp_path / "usps.calib.pt"
    shutil.copy(trained_calibrator, out)
    before = file_digest(out)
    one_line(invoke("train", "--classifier", trained_dtn, "--source", "mnist", "--target",
                    "usps", "--domain", "usps", "--out", out, "--epochs", 1, "--data-root",
                    shared_data), "already exists; pass --force to replace it")
    assert file_digest(out) == before


def _edge_calib_process(*args):
    return subprocess.Popen([sys.executable, "-m", "edge_calib.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_writing_one_video_one_wins_the_other_is_refused(bundle_dir, tmp_path):
    """Two real processes, one --output and one --predictions: the second is refused in one line
    before it writes anything; the first ends 0 with its whole video and log; no lock or
    temporary file is left."""
    import cv2
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(40):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((32, 32, 3), 5 * i, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    common = ["run", "--deploy", bundle_dir, "--input", frames, "--domain", "mnist",
              "--headless", "--threads", "1", "--output", out / "same.mp4"]
    first = _edge_calib_process(*common, "--realtime", "--fps", "10",
                                "--predictions", out / "p.jsonl")
    deadline = time.time() + 120
    while not any(p.name.endswith(".lock") for p in out.iterdir()):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "edge_calib.cli", *map(str, common)],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert lines == [f"error: --output {out / 'same.mp4'}: another edge-calib process is writing "
                     "it; wait for it to finish or choose another name"]
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["p.jsonl", "same.mp4"]
    assert len((out / "p.jsonl").read_text().splitlines()) == 40


def test_two_trainings_to_one_out_the_second_is_refused(trained_dtn, shared_data, tmp_path):
    from edge_calib.core.fileio import OutputLock

    out = tmp_path / "c.calib.pt"
    with OutputLock(out, "--out"):  # held as a running `train` holds it
        r = invoke("train", "--classifier", trained_dtn, "--source", "mnist", "--target", "usps",
                   "--domain", "usps", "--out", out, "--epochs", 1, "--max-samples", 64,
                   "--data-root", shared_data, "--quiet")
        one_line(r, f"--out {out}: another edge-calib process is writing it")
        for command in (["train-classifier", "--dataset", "mnist"],
                        ["compress", trained_dtn, "--int8", "--calib-dataset", "mnist"]):
            r = invoke(*command, "--out", out, "--data-root", shared_data)
            one_line(r, f"--out {out}: another edge-calib process is writing it")
    assert [p.name for p in tmp_path.iterdir()] == []


def test_the_output_lock_has_one_holder_while_holders_come_and_go(tmp_path):
    """Four threads take and release one output's lock 2,000 times each (each its own open
    file, as separate processes would). A holder removes the lock file as it releases it; one
    that had opened the old file just before must not hold the lock beside the next one."""
    import threading
    import time

    from edge_calib.core.errors import EdgeCalibError
    from edge_calib.core.fileio import OutputLock

    out, guard, holders, most, taken = tmp_path / "x.pt", threading.Lock(), [0], [0], [0]

    def worker():
        for _ in range(2000):
            try:
                lock = OutputLock(out, "--out")
            except EdgeCalibError:
                continue
            with guard:
                holders[0] += 1
                most[0], taken[0] = max(most[0], holders[0]), taken[0] + 1
            time.sleep(0)  # let the others run while this one holds it
            with guard:
                holders[0] -= 1
            lock.release()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and taken[0] > 100
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_ours_is_never_replaced(trained_dtn, shared_data, tmp_path):
    """A user's own file at --out (a report, a model of another tool) is refused by every
    command that writes a checkpoint, --force included; one of our checkpoints is replaced."""
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes, not a checkpoint")
    expected = f"--out {notes}: an existing file that is not an edge-calib checkpoint"
    for command in (
            ["train", "--classifier", trained_dtn, "--source", "mnist", "--target", "usps",
             "--domain", "usps", "--epochs", 1, "--max-samples", 64, "--force"],
            ["train-classifier", "--dataset", "mnist", "--epochs", 1, "--max-samples", 64],
            ["compress", trained_dtn, "--int8", "--calib-dataset", "mnist", "--max-samples", 64]):
        one_line(invoke(*command, "--out", notes, "--data-root", shared_data), expected)
    assert notes.read_text() == "my notes, not a checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pt"]
    ours = tmp_path / "ours.pt"
    shutil.copy(trained_dtn, ours)
    r = invoke("compress", trained_dtn, "--int8", "--calib-dataset", "mnist", "--max-samples",
               64, "--out", ours, "--data-root", shared_data, "--quiet")
    assert r.exit_code == 0, r.output
    assert file_digest(ours) != file_digest(trained_dtn)
