#!/usr/bin/env python3
"""Run the bad-input catalogues (``../shared/docs/BAD_INPUTS.md``'s two, and issue 35's third)
against the real CLI and write the table: per case the command's last stderr line, its exit
status, whether a traceback appeared, and whether the good files it could have touched stayed
byte-identical.

    python benchmarks/bad_inputs.py --demo .edge-calib-demo      # after `edge-calib demo`

Uses the demo's classifier, calibrator, bundle and video as the good state; every case works
on copies in a temporary folder. Results: ``benchmarks/results/bad_inputs/``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edge_calib.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bad_inputs"


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256("".join(digest(p) + p.name for p in sorted(path.rglob("*"))
                                      if p.is_file()).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


class Catalogue:
    def __init__(self, tmp: Path, data_root: str):
        self.tmp, self.data_root, self.rows = tmp, data_root, []

    def case(self, family: str, what: str, args: list, keep=(), env=None, expect_fail=True,
             stdin=None, after=None, warns=None):
        before = {str(p): digest(Path(p)) for p in keep}
        started = time.time()
        proc, peak_mb = run_measured(["edge-calib", *map(str, args)], self.tmp,
                                     os.environ | {"EDGE_CALIB_OFFLINE": "1"} | (env or {}), stdin)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        kept = all(digest(Path(p)) == h for p, h in before.items())
        extra = after() if after else None
        if warns is not None:
            extra = (extra is not False) and warns in proc.stderr
        ok = ((proc.returncode != 0) == expect_fail and "Traceback" not in proc.stderr and kept
              and (extra is None or extra))
        self.rows.append({"family": family, "case": what, "exit": proc.returncode,
                          "message": lines[-1] if lines else proc.stdout.strip()[-200:],
                          "traceback": "Traceback" in proc.stderr, "good_files_kept": kept,
                          "check": extra, "ok": ok, "seconds": round(time.time() - started, 1),
                          "peak_rss_mb": peak_mb})
        print(("ok  " if ok else "FAIL") + f" {family}: {what}: exit {proc.returncode}: "
              f"{self.rows[-1]['message'][:150]}", flush=True)


# Forks the command from a small process and reports its peak RSS (ru_maxrss from wait4) on a
# pipe. Linux records the memory image a process had when it called exec into its peak, so a
# command forked straight from this one would report at least this process's own RSS.
SPAWN = """import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(fd, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], cwd: Path, env: dict, stdin: str | None, timeout=300):
    """Run ``command`` to its end; (CompletedProcess, its peak resident memory in MB, from the
    kernel's accounting of that one process, forked from a small spawner: ``SPAWN``)."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-S", "-c", SPAWN, str(write_end), *command],
                            cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(write_end,),
                            start_new_session=True,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
    os.close(write_end)
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        stdout, stderr = proc.communicate(stdin)
    finally:
        timer.cancel()
    with os.fdopen(read_end, "rb") as pipe:
        peak = pipe.read()
    peak_mb = round(int(peak) / 1024, 1) if peak else None  # none when the spawner was killed
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), peak_mb


def copy_demo(demo: Path, tmp: Path) -> dict:
    manifests = sorted(demo.glob("bundle-*/manifest.json"))
    calibrators = sorted(demo.glob("*.calib.pt"))
    videos = sorted(demo.glob("stream-*.avi"))
    if not (manifests and calibrators and videos and (demo / "mnist_dtn_int8.pt").exists()):
        sys.exit(f"{demo}: run `edge-calib demo --work {demo}` first")
    out = {"clf": tmp / "clf_int8.pt", "float": tmp / "clf_float.pt", "cal": tmp / "cal.calib.pt",
           "bundle": tmp / "bundle", "video": tmp / "stream.avi"}
    shutil.copy(demo / "mnist_dtn_int8.pt", out["clf"])
    shutil.copy(demo / "mnist_dtn.pt", out["float"])
    shutil.copy(calibrators[0], out["cal"])
    shutil.copytree(manifests[0].parent, out["bundle"])
    shutil.copy(videos[0], out["video"])
    return out


def fresh_bundle(good: Path, tmp: Path, name: str, edit=None) -> Path:
    b = tmp / name
    shutil.copytree(good, b)
    if edit:
        edit(b)
    return b


def json_edit(fn):
    def edit(b):
        m = json.loads((b / "manifest.json").read_text())
        (b / "manifest.json").write_text(json.dumps(fn(m)))
    return edit


def run_catalogue(demo: Path, data_root: str) -> list[dict]:
    import numpy as np
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    g = copy_demo(demo, tmp)
    c = Catalogue(tmp, data_root)
    dr = ["--data-root", data_root]
    ev = ["eval", "--dataset", "mnist:colour", "--max-samples", "50", *dr]

    # checkpoints
    (tmp / "zero.pt").write_bytes(b"")
    c.case("checkpoints", "zero bytes", [*ev, "--classifier", "zero.pt"])
    (tmp / "trunc.pt").write_bytes(g["clf"].read_bytes()[:5000])
    c.case("checkpoints", "truncated", [*ev, "--classifier", "trunc.pt"])
    (tmp / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    c.case("checkpoints", "random bytes", [*ev, "--classifier", "random.pt"])

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp}/PWNED",))

    torch.save({"format": "edge-calib", "x": Evil()}, tmp / "evil.pt")
    c.case("checkpoints", "pickle with __reduce__ (must not run)", [*ev, "--classifier", "evil.pt"],
           after=lambda: not (tmp / "PWNED").exists())
    meta, tensors = load_checkpoint(g["clf"], "classifier")
    state = tensors["state"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.01
    save_checkpoint(tmp / "changed.pt", "classifier", meta, tensors)
    c.case("checkpoints", "one weight changed (calibrator pairing by fingerprint)",
           [*ev, "--classifier", "changed.pt", "--calibrator", g["cal"]])
    c.case("checkpoints", "wrong kind (calibrator as classifier)", [*ev, "--classifier", g["cal"]])
    c.case("checkpoints", "calibrator trained against another model",
           [*ev, "--classifier", g["float"], "--calibrator", g["cal"]])
    meta, tensors = load_checkpoint(g["clf"], "classifier")
    save_checkpoint(tmp / "ten.pt", "classifier", meta | {"num_classes": "ten"}, tensors)
    c.case("checkpoints", "num_classes: \"ten\"", [*ev, "--classifier", "ten.pt"])

    # data
    c.case("data", "missing data root (offline)", ["eval", "--classifier", g["clf"], "--dataset",
                                                    "mnist", "--data-root", tmp / "nowhere"])
    root = tmp / "data"
    shutil.copytree(Path(data_root) / "mnist", root / "mnist")
    victim = next(p for p in sorted((root / "mnist").rglob("t10k-images*")) if p.is_file())
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    c.case("data", "canonical file truncated", ["eval", "--classifier", g["clf"], "--dataset",
                                                "mnist", "--data-root", root])
    frames = tmp / "frames"
    frames.mkdir()
    import cv2
    for i in range(20):
        cv2.imwrite(str(frames / f"{i:02d}.png"), np.full((40 + i, 40, 3), 30 * (i % 8), np.uint8))
    (frames / "notes.txt").write_text("not an image")
    (frames / "zero.png").write_bytes(b"")
    (frames / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    c.case("data", "target folder: a zero-byte and a corrupt image among mixed sizes",
           ["train", "--classifier", g["clf"], "--source", "mnist", "--target", frames,
            "--domain", "x", "--out", "x.calib.pt", "--epochs", "1", "--max-samples", "20",
            "--batch-size", "10", "--quiet", *dr])
    c.case("data", "unknown dataset name", [*ev[:2], "mnistt", *ev[3:], "--classifier", g["clf"]])
    empty = tmp / "empty"
    empty.mkdir()
    c.case("data", "empty target folder", ["train", "--classifier", g["clf"], "--source", "mnist",
                                           "--target", empty, "--domain", "x", "--out", "y.calib.pt",
                                           *dr])

    # numbers
    base = ["train", "--classifier", g["clf"], "--source", "mnist", "--target", "mnist:colour",
            "--domain", "x", "--out", "n.calib.pt", "--max-samples", "20", "--batch-size", "10",
            "--quiet", *dr]
    for flag, value in (("--eps", "0"), ("--eps", "inf"), ("--eps", "nan"), ("--lr", "-1"),
                        ("--lr", "nan"), ("--epochs", "0"), ("--batch-size", "0")):
        c.case("numbers", f"{flag} {value}", [*base, flag, value])
    c.case("numbers", "losses become non-finite (lr 1e30)",
           [*base, "--lr", "1e30", "--d-lr", "1e30", "--epochs", "2"],
           after=lambda: not (tmp / "n.calib.pt").exists())

    # bundles
    good = g["bundle"]
    evb = lambda b, *more: ["eval", "--deploy", b, "--dataset", "mnist:colour", "--max-samples",  # noqa: E731
                            "50", *dr, *more]
    for what, edit in (
            ("manifest missing", lambda b: (b / "manifest.json").unlink()),
            ("manifest not JSON", lambda b: (b / "manifest.json").write_text("{oops")),
            ("manifest is a list", lambda b: (b / "manifest.json").write_text("[]")),
            ("input_spec missing", json_edit(lambda m: {k: v for k, v in m.items()
                                                        if k != "input_spec"})),
            ("a named file altered", lambda b: (b / next(iter(json.loads(
                (b / "manifest.json").read_text())["files"]))).write_bytes(b"x")),
            ("a file's hash entry removed", json_edit(lambda m: m | {"files": dict(
                list(m["files"].items())[1:])})),
            ("newer format", json_edit(lambda m: m | {"format_version": 99}))):
        c.case("bundles", what, evb(fresh_bundle(good, tmp, "b_" + what.replace(" ", "_")[:20],
                                                 edit)))
    c.case("bundles", "profile asks for what this machine cannot do (TensorRT here)",
           ["build-engine", "--deploy", fresh_bundle(good, tmp, "b_trt"), "--profile",
            "orin-nano"])

    # outputs
    run = ["run", "--deploy", good, "--input", g["video"], "--domain", "auto", "--headless",
           "--max-frames", "30"]
    (tmp / "afile").write_text("a file")
    c.case("outputs", "--predictions in a missing folder (created; exit 0)",
           [*run, "--predictions", tmp / "nope" / "p.jsonl"], expect_fail=False,
           after=lambda: (tmp / "nope" / "p.jsonl").stat().st_size > 0)
    c.case("outputs", "--predictions under a file", [*run, "--predictions", tmp / "afile" / "p"],
           keep=[tmp / "afile"])
    c.case("outputs", "--output on a folder", [*run, "--output", empty])
    (tmp / "precious.txt").write_text("keep me")
    c.case("outputs", "--control at an existing regular file", [*run, "--control",
                                                                tmp / "precious.txt"],
           keep=[tmp / "precious.txt"])
    (tmp / "good.jsonl").write_text('{"frame": 0}\n')
    c.case("outputs", "a run that fails before its first frame keeps the old predictions",
           ["run", "--deploy", good, "--input", tmp / "missing.mp4", "--domain", "auto",
            "--headless", "--predictions", tmp / "good.jsonl"], keep=[tmp / "good.jsonl"])
    keep_bundle = fresh_bundle(good, tmp, "b_keep")
    c.case("outputs", "export over a good bundle with a NaN calibrator (--force)",
           ["export", "--classifier", g["clf"], "--calibrator", "x=" + str(nan_calibrator(g, tmp)),
            "--out", keep_bundle, "--force", "--no-auto-domain", "--quiet", *dr],
           keep=[keep_bundle])

    # processes
    state_case(c, g, tmp, dr)
    stalled_case(c, good, tmp)

    # streams
    c.case("streams", "missing camera", ["run", "--deploy", good, "--camera", "7", "--domain",
                                         "auto", "--headless", "--reconnect-timeout", "1"])
    c.case("streams", "file that does not exist", [*run[:4], "nope.mp4", *run[5:]])
    (tmp / "empty.avi").write_bytes(b"")
    c.case("streams", "empty video", [*run[:4], tmp / "empty.avi", *run[5:]])
    data = g["video"].read_bytes()
    (tmp / "trunc.avi").write_bytes(data[: len(data) // 3])
    c.case("streams", "truncated video (warns, ends, exit 0)", [*run[:4], tmp / "trunc.avi",
                                                                 *run[5:-2]], expect_fail=False,
           warns="frames its header announces")
    hostile_cases(c, g, tmp, dr)
    third_round_cases(c, g, tmp, dr)
    shutil.rmtree(tmp, ignore_errors=True)
    return c.rows


def rehashed(bundle: Path) -> Path:
    """Re-hash every file the manifest names, and the manifest: a deliberate, consistent edit."""
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = {name: digest(bundle / name) for name in m["files"]}
    text = json.dumps(m, indent=2)
    (bundle / "manifest.json").write_text(text)
    (bundle / "manifest.sha256").write_text(
        hashlib.sha256(text.encode()).hexdigest() + "  manifest.json\n")
    return bundle


def hostile_cases(c: Catalogue, g: dict, tmp: Path, dr: list) -> None:
    """The second catalogue (hostile but realistic): names that become paths, what a bundle
    runs, resource caps, concurrent writers, file systems, option values at the edges, old
    third-party graphs. The control socket's cases (another user, over-long lines) and a
    capture thread that runs out of memory need a live run and a memory limit: they are run by
    tests/test_runtime_robustness.py."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    good, cal, clf = g["bundle"], g["cal"], g["clf"]
    # names that become paths
    (tmp / "victim").mkdir()
    (tmp / "victim" / "classifier.onnx").write_bytes(b"keep me")
    for name in ("../../victim/classifier", "/tmp/abs", "a" * 300):
        c.case("names that become paths", f"export --calibrator {name[:30]}=CAL",
               ["export", "--classifier", clf, "--calibrator", f"{name}={cal}", "--out",
                tmp / "deploy" / "new", "--no-auto-domain", "--quiet", *dr],
               keep=[tmp / "victim"], after=lambda: not (tmp / "deploy").exists())
    # what a bundle runs
    b = fresh_bundle(good, tmp, "b_size")
    path = next(p for p in sorted((b / "calibrators").glob("*.onnx")) if p.name.count(".") == 1)
    old = onnx.load(str(path))
    inp, out = old.graph.input[0].name, old.graph.output[0].name
    dims = [d.dim_value for d in old.graph.input[0].type.tensor_type.shape.dim]
    half = [1, dims[1], dims[2] // 2, dims[3] // 2]
    model = helper.make_model(helper.make_graph(
        [helper.make_node("AveragePool", [inp], [out], kernel_shape=[2, 2], strides=[2, 2])],
        "half", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, [1, *dims[1:]])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, half)]),
        opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    domain = path.stem
    c.case("what a bundle runs", "calibrator output smaller than the model input (re-hashed)",
           ["eval", "--deploy", rehashed(b), "--domain", domain, "--dataset", "mnist:colour",
            "--max-samples", "20", *dr])
    b = fresh_bundle(good, tmp, "b_auto")
    auto = json.loads((b / "domain_classifier.json").read_text())
    auto["domains"] = auto["domains"][:1]
    (b / "domain_classifier.json").write_text(json.dumps(auto))
    c.case("what a bundle runs", "auto-domain model names fewer domains than it scores",
           ["run", "--deploy", rehashed(b), "--input", g["video"], "--domain", "auto",
            "--headless", "--max-frames", "20"])
    b = fresh_bundle(good, tmp, "b_external")
    m = onnx.load(str(b / "classifier.onnx"))
    onnx.save(m, str(b / "classifier.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    c.case("what a bundle runs", "classifier weights moved to an unhashed external data file",
           ["eval", "--deploy", rehashed(b), "--dataset", "mnist:colour", "--max-samples", "20",
            *dr])
    # resource caps
    frames = tmp / "bomb"
    frames.mkdir()
    import cv2
    for i in range(4):
        cv2.imwrite(str(frames / f"{i}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
    write_big_png(frames / "bomb.png")
    c.case("resource caps", "a 9000x9000 PNG (a few hundred KB) in a target folder",
           ["train", "--classifier", clf, "--source", "mnist", "--target", frames, "--domain",
            "b", "--out", tmp / "b.calib.pt", "--epochs", "1", "--max-samples", "20", *dr])
    c.case("resource caps", "the same PNG among the frames of a run (skipped, counted, exit 0)",
           ["run", "--deploy", good, "--input", frames, "--domain", "auto", "--headless",
            "--json"], expect_fail=False, warns="over the cap")
    # concurrent writers
    concurrent_case(c, clf, tmp)
    # file systems
    mounted = tmpfs(tmp / "full", "256k")
    if mounted:
        c.case("file systems", "export onto a full disk (256 KB tmpfs)",
               ["export", "--classifier", clf, "--calibrator", "mnist=identity",
                "--no-auto-domain", "--quiet", "--out", tmp / "full" / "bundle"],
               after=lambda: list((tmp / "full").iterdir()) == [])
        subprocess.run(["umount", str(tmp / "full")], check=False)
    if tmpfs(tmp / "ro", "1m", read_only=True):
        c.case("file systems", "export into a read-only file system",
               ["export", "--classifier", clf, "--calibrator", "mnist=identity",
                "--no-auto-domain", "--quiet", "--out", tmp / "ro" / "bundle"])
        subprocess.run(["umount", str(tmp / "ro")], check=False)
    c.case("file systems", "an output name longer than the file system allows",
           ["export", "--classifier", clf, "--calibrator", "mnist=identity", "--no-auto-domain",
            "--quiet", "--out", tmp / ("b" * 300)])
    # option values at the edges
    run = ["run", "--deploy", good, "--input", g["video"], "--domain", "auto", "--headless"]
    for flag, value in (("--fps", "nan"), ("--fps", "1e-300"), ("--fps", "1e308"),
                        ("--reconnect-timeout", "inf"), ("--max-frames", str(2 ** 63))):
        c.case("option values at the edges", f"run {flag} {value}", [*run, flag, value])
    c.case("option values at the edges", "compress --finetune-lr nan",
           ["compress", g["float"], "--prune", "2:4", "--finetune-epochs", "1",
            "--finetune-lr", "nan", "--calib-dataset", "mnist", "--out", tmp / "q.pt", *dr])
    # third-party model files
    old_model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])]),
        opset_imports=[helper.make_opsetid("", 6)])
    old_model.ir_version = 3
    onnx.save(old_model, str(tmp / "opset6.onnx"))
    c.case("third-party model files", "an opset-6 graph", [
        "import-model", tmp / "opset6.onnx", "--out", tmp / "old.pt", "--check-dataset", "mnist",
        *dr],
        after=lambda: not (tmp / "old.pt").exists())


def third_round_cases(c: Catalogue, g: dict, tmp: Path, dr: list) -> None:
    """The third catalogue (issue 35: an unattended device and a user's files): decoders' pixel
    cap beyond PNG, memory bounded before it is spent, outputs that are inputs or a user's
    files, two writers of one output, a video cut short by a full disk, names at the file
    system's limits. Hostile clients of the live view and the control socket, and reload
    churn, are measured by ``benchmarks/soak.py --hostile``."""
    import cv2
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from edge_calib.core.fileio import OutputLock

    good, clf = g["bundle"], g["clf"]
    run = ["run", "--deploy", good, "--domain", "auto", "--headless"]
    # every decoder has the pixel cap: headers that claim 20000x20000, a few bytes of pixels
    for ext, header in ((".bmp", _bmp_header(20000, 20000)), (".ppm", b"P6\n20000 20000\n255\n")):
        folder = tmp / f"claims{ext[1:]}"
        folder.mkdir()
        for i in range(3):
            cv2.imwrite(str(folder / f"{i}.png"), np.full((32, 32, 3), 60 * i, np.uint8))
        (folder / f"huge{ext}").write_bytes(header + b"\0" * 4096)
        c.case("decoders' pixel cap", f"a {ext} header claiming 20000x20000 in a run's frames "
               "(skipped, counted, exit 0)", [*run, "--input", folder, "--json"],
               expect_fail=False, warns="huge" + ext)
    jpegs = tmp / "cutjpeg"
    jpegs.mkdir()
    for i in range(3):
        cv2.imwrite(str(jpegs / f"{i}.jpg"), np.full((64, 64, 3), 60 * i, np.uint8))
    data = (jpegs / "0.jpg").read_bytes()
    (jpegs / "0.jpg").write_bytes(data[: len(data) // 2])
    c.case("decoders' pixel cap", "a JPEG cut in half among a target folder's frames",
           ["train", "--classifier", clf, "--source", "mnist", "--target", jpegs, "--domain",
            "j", "--out", tmp / "j.calib.pt", "--epochs", "1", "--max-samples", "20", *dr])
    # memory bounded before it is spent
    c.case("memory", "train-classifier --input-size 100000x100000",
           ["train-classifier", "--dataset", "camvid:day", "--arch", "lraspp_small",
            "--input-size", "100000x100000", "--out", tmp / "seg.pt", *dr])
    c.case("memory", "train --train-size 50000x50000",
           ["train", "--classifier", clf, "--source", "mnist", "--target", "mnist:colour",
            "--domain", "c", "--train-size", "50000x50000", "--out", tmp / "t.calib.pt", *dr])
    c.case("memory", "train-classifier at a batch over the memory left (CamVid 360x480, "
           "--batch-size 64, $EDGE_CALIB_TRAIN_MEMORY=1 GiB)",
           ["train-classifier", "--dataset", "camvid:day", "--arch", "lraspp_small",
            "--input-size", "360x480", "--batch-size", "64", "--epochs", "1", "--out",
            tmp / "seg64.pt", *dr], env={"EDGE_CALIB_TRAIN_MEMORY": str(1 << 30)},
           after=lambda: not (tmp / "seg64.pt").exists())
    # outputs that are inputs, or a user's own files
    os.link(clf, tmp / "clf_link.pt")
    c.case("own inputs", "compress --out a hard link of its CHECKPOINT",
           ["compress", clf, "--int8", "--calib-dataset", "mnist", "--out", tmp / "clf_link.pt",
            *dr], keep=[clf])
    c.case("own inputs", "run --output onto its own --input video",
           [*run, "--input", g["video"], "--output", g["video"]], keep=[g["video"]])
    (tmp / "notes.pt").write_text("my notes, not a checkpoint")
    c.case("own inputs", "train --force onto a user's file that is not a checkpoint",
           ["train", "--classifier", clf, "--source", "mnist", "--target", "mnist:colour",
            "--domain", "c", "--epochs", "1", "--max-samples", "32", "--force", "--out",
            tmp / "notes.pt", *dr], keep=[tmp / "notes.pt"])
    # two writers of one output: a lock held as a running command holds it
    with OutputLock(tmp / "busy.mp4", "--output"):
        c.case("two writers", "run --output a video another run is writing",
               [*run, "--input", g["video"], "--max-frames", "10", "--output", tmp / "busy.mp4"],
               after=lambda: not (tmp / "busy.mp4").exists())
    with OutputLock(tmp / "busy.pt", "--out"):
        c.case("two writers", "compress --out a checkpoint another process is writing",
               ["compress", g["float"], "--int8", "--calib-dataset", "mnist", "--max-samples",
                "64", "--out", tmp / "busy.pt", *dr], after=lambda: not (tmp / "busy.pt").exists())
    # write failures are seen: OpenCV's writer does not report a full disk
    frames = tmp / "noise"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        cv2.imwrite(str(frames / f"{i:03d}.png"), rng.integers(0, 255, (240, 320, 3), np.uint8))
    if tmpfs(tmp / "small", "256k"):
        (tmp / "small" / "v.mp4").write_bytes(b"an earlier good video")
        c.case("write failures", "run --output onto a disk that fills (256 KB tmpfs)",
               [*run, "--input", frames, "--output", tmp / "small" / "v.mp4"],
               keep=[tmp / "small" / "v.mp4"],
               after=lambda: sorted(p.name for p in (tmp / "small").iterdir())
               == ["v.mp4", "v.partial.mp4"])
        subprocess.run(["umount", str(tmp / "small")], check=False)
    # names at the file system's limits
    longest = tmp / ("p" * 249 + ".jsonl")
    c.case("names", "--predictions with a 255-byte name (exit 0)",
           [*run, "--input", g["video"], "--max-frames", "10", "--predictions", longest],
           expect_fail=False, after=lambda: longest.exists())
    c.case("names", "--out whose parent is a file",
           ["export", "--classifier", clf, "--calibrator", "mnist=identity", "--no-auto-domain",
            "--quiet", "--out", tmp / "notes.pt" / "bundle"], keep=[tmp / "notes.pt"])
    c.case("names", "data info camvid (exit 0)", ["data", "info", "camvid", *dr],
           expect_fail=False)


def _bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP file and info header for width x height pixels."""
    import struct

    size = 54 + width * height * 3
    return (b"BM" + struct.pack("<IHHI", size, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, width * height * 3,
                          2835, 2835, 0, 0))


def tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    """A small tmpfs at ``path`` (a full disk, a read-only file system); False where this user
    cannot mount (the cases are then left out, and say so)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"skip  file systems: cannot mount a tmpfs here ({done.stderr.strip()})")
    return done.returncode == 0


def concurrent_case(c: Catalogue, clf: Path, tmp: Path) -> None:
    """Two exports to one new --out at once, neither with --force: one bundle, one refusal."""
    out = tmp / "together"
    args = ["edge-calib", "export", "--classifier", str(clf), "--calibrator", "mnist=identity",
            "--no-auto-domain", "--quiet", "--out", str(out)]
    started = time.time()
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    refusal = next((err for code, err in results if code != 0), "")
    lines = [ln for ln in refusal.splitlines() if ln.strip()]
    ok = codes[0] == 0 and codes[1] != 0 and "Traceback" not in refusal and (
        out / "manifest.json").is_file()
    c.rows.append({"family": "concurrent writers", "case": "two exports to one new --out at once",
                   "exit": codes[1], "message": lines[-1] if lines else "", "traceback":
                   "Traceback" in refusal, "good_files_kept": (out / "manifest.json").is_file(),
                   "check": ok, "ok": ok, "seconds": round(time.time() - started, 1)})
    print(("ok  " if ok else "FAIL") + f" concurrent writers: {c.rows[-1]['message'][:150]}")


def write_big_png(path: Path, side: int = 9000) -> Path:
    """A valid grey PNG of side x side pixels (81 MP, over the 67 MP cap), a few hundred KB."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(9), b"\0" * (side + 1)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side,
                                                                          8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def nan_calibrator(g, tmp: Path) -> Path:
    """The demo's calibrator with every weight NaN (what a diverged training would give)."""
    import torch

    meta, tensors = load_checkpoint(g["cal"], "calibrator")
    tensors["state"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                        for k, v in tensors["state"].items()}
    out = tmp / "nan.calib.pt"
    save_checkpoint(out, "calibrator", meta, tensors)
    return out


def state_case(c: Catalogue, g: dict, tmp: Path, dr: list) -> None:
    """kill -9 in the middle of a training run, then --resume."""
    out = tmp / "k.calib.pt"
    args = ["edge-calib", "train", "--classifier", str(g["clf"]), "--source", "mnist", "--target",
            "mnist:colour", "--domain", "k", "--out", str(out), "--epochs", "3", "--max-samples",
            "600", "--batch-size", "50", "--quiet", *map(str, dr)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out.with_name("k.calib.state.pt")
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    c.case("processes", "kill -9 during training, then --resume", [*args[1:], "--resume"],
           expect_fail=False, after=lambda: out.exists())


def stalled_case(c: Catalogue, good: Path, tmp: Path) -> None:
    """SIGTERM while the source is an HTTP stream that accepted the connection and sends
    nothing: stops within a few seconds, no traceback. (While OpenCV is still blocked opening
    the stream, the default disposition ends the process: exit -15, nothing written yet.)"""
    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "video/x-motion-jpeg")
            self.end_headers()
            time.sleep(60)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    proc = subprocess.Popen(["edge-calib", "run", "--deploy", str(good), "--input", url,
                             "--domain", "auto", "--headless", "--reconnect-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
        took = time.time() - sent
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        took = float("inf")
    server.shutdown()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    c.rows.append({"family": "processes", "case": "SIGTERM while an HTTP stream stalls",
                   "exit": proc.returncode, "message": (lines[-1] if lines else "")
                   + f" (stopped {took:.1f} s after SIGTERM)", "traceback": "Traceback" in err,
                   "good_files_kept": True, "check": took < 3, "ok": took < 3
                   and "Traceback" not in err, "seconds": round(took, 1)})
    print(("ok  " if c.rows[-1]["ok"] else "FAIL") + " " + c.rows[-1]["message"], flush=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| family | case | exit | message (last line) | traceback | good files kept | "
             "peak memory (MB) | ok |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        peak = r.get("peak_rss_mb")
        lines.append(f"| {r['family']} | {r['case']} | {r['exit']} | {msg} | "
                     f"{'yes' if r['traceback'] else 'no'} | "
                     f"{'yes' if r['good_files_kept'] else 'NO'} | "
                     f"{'-' if peak is None else peak} | {'✓' if r['ok'] else '✗'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default=".edge-calib-demo")
    parser.add_argument("--data-root", default=os.environ.get(
        "EDGE_CALIB_DATA", str(ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    rows = run_catalogue(Path(args.demo).resolve(), str(Path(args.data_root).resolve()))
    from edge_calib.core.provenance import capture, git_commit

    RESULTS.mkdir(parents=True, exist_ok=True)
    sha, dirty = git_commit(ROOT)
    (RESULTS / "bad_inputs.json").write_text(json.dumps(
        {"commit": sha, "uncommitted_changes": dirty, "machine": capture(), "rows": rows},
        indent=2, default=str) + "\n")
    (RESULTS / "bad_inputs.md").write_text(
        "# The bad-input catalogue, run by `python benchmarks/bad_inputs.py`\n\n"
        f"{sum(r['ok'] for r in rows)} of {len(rows)} cases as required (one line, "
        "exit != 0 where it fails, no traceback, good files byte-identical).\n\n"
        + markdown(rows) + "\n")
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} ok; {RESULTS / 'bad_inputs.md'}")


if __name__ == "__main__":
    main()
