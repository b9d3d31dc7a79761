"""`edge-calib adapt`: a new domain added to a bundle from its unlabelled frames, on real data
(an MNIST bundle that knows only `mnist`, real `mnist:colour` frames), and the bad inputs of
issue 32 (one line each, the running bundle untouched)."""

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_calib.cli import main

QUICK = ("--epochs", "2", "--restarts", "1", "--batch-size", "32", "--quiet")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def edge_calib(*args):
    return subprocess.run([sys.executable, "-m", "edge_calib.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def one_line(proc, words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]  # EdgeCalibError: the user's input
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    return lines[0]


def digests(root):
    from edge_calib.core.fileio import file_digest

    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".adapt.lock"}


@pytest.fixture(scope="module")
def mnist_bundle(trained_dtn, shared_data, tmp_path_factory):
    """A bundle that knows only `mnist` (identity), with its open-set auto-domain model and the
    source record adapt trains from."""
    out = tmp_path_factory.mktemp("adapt") / "mnist"
    r = invoke("export", "--classifier", trained_dtn, "--calibrator", "mnist=identity", "--out",
               out, "--data-root", shared_data, "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def colour_frames(shared_data, tmp_path_factory):
    """80 real mnist:colour training frames as PNG files, as a camera folder."""
    from edge_calib.data import load_dataset

    ds = load_dataset("mnist:colour", "train", shared_data).subset(80, 0)
    folder = tmp_path_factory.mktemp("frames") / "colour"
    folder.mkdir()
    for i, image in enumerate(ds.images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), image[..., ::-1])
    return folder


@pytest.fixture(scope="module")
def adapted(mnist_bundle, colour_frames, tmp_path_factory):
    work = tmp_path_factory.mktemp("adapted") / "bundle"
    shutil.copytree(mnist_bundle, work)
    before = digests(work)
    proc = edge_calib("adapt", "--deploy", work, "--frames", colour_frames, "--domain", "colour",
                      *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, before, json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_carries_the_source_record(mnist_bundle, trained_dtn):
    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.models.store import load_classifier

    b = open_bundle(mnist_bundle)
    entry = b.manifest.source_stats
    assert entry["dataset"] == "mnist" and entry["frames"] == "source/frames.npy"
    want = load_classifier(trained_dtn).source_stats.tensors()
    with np.load(b.path(entry["file"])) as saved:
        assert sorted(saved.files) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(saved[key], value.numpy())
    frames = np.load(b.path(entry["frames"]))
    assert frames.dtype == np.uint8 and frames.shape == (256, 32, 32, 3)
    assert b.manifest.domain_classifier.domains == ["mnist"]  # one domain: the open set alone


def test_adapt_adds_the_domain_and_leaves_the_others_alone(adapted, mnist_bundle):
    from edge_calib.deploy.bundle import open_bundle

    work, before, result = adapted
    b = open_bundle(work)  # verifies every hash
    assert b.domains == ["mnist", "colour"] and result["domains"] == ["mnist", "colour"]
    after = digests(work)
    kept = {k: v for k, v in before.items() if k not in result["removed"]
            and k not in ("manifest.json", "manifest.sha256")}
    assert all(after[k] == v for k, v in kept.items())  # every other file byte-identical
    assert result["removed"] == ["domain_classifier.json"]  # refitted under a new name
    assert not (work / "domain_classifier.json").exists()
    entry = b.calibrator("colour")
    choice = entry.metrics["choice"]
    assert choice["chosen"] == min(choice["scores"], key=choice["scores"].get) == result["chosen"]
    assert entry.metrics["made"]["frames"] == 80 and entry.trained_against == \
        b.manifest.classifier.fingerprint
    assert b.manifest.provenance["adapted"][0]["domain"] == "colour"
    old = open_bundle(mnist_bundle).manifest.domains["mnist"]
    assert b.manifest.domains["mnist"] == old


def test_the_adapted_domain_runs_and_the_vote_finds_it(adapted, colour_frames, shared_data):
    from edge_calib.data import load_dataset
    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.imaging.domain_features import frame_features
    from edge_calib.runtime.domain_auto import load_domain_model

    work, _, _ = adapted
    b = open_bundle(work)
    model = load_domain_model(b.domain_classifier_file(), b.domains)
    assert model.domains == ["mnist", "colour"]
    spec = b.spec
    for name, want in (("mnist:colour", "colour"), ("mnist", "mnist")):
        test = spec.resize_uint8(load_dataset(name, "test", shared_data).images[:200])
        z = model.standardise(frame_features(test))
        named = np.array(model.domains)[model.probabilities(z).argmax(1)]
        inside = (model.ratios(z) <= 1).any(axis=1)
        assert (named == want).mean() > 0.9 and inside.mean() > 0.9, (name, want)
    r = invoke("eval", "--deploy", work, "--domain", "colour", "--dataset", "mnist:colour",
               "--split", "test", "--max-samples", "300", "--json", "--data-root", shared_data)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["n"] == 300


def test_add_domain_keeps_the_known_domains():
    """The known domains' scaling, weights, references and radii are kept; the new domain's
    references and radius are what fit_novelty gives for its frames alone."""
    from edge_calib.export.domain_model import add_domain, fit_domain_model

    rng = np.random.default_rng(0)
    a = rng.integers(0, 120, (40, 24, 32, 3), dtype=np.uint8)
    b = rng.integers(120, 256, (40, 24, 32, 3), dtype=np.uint8)
    c = np.full((30, 24, 32, 3), 60, np.uint8) + rng.integers(0, 30, (30, 24, 32, 3),
                                                               dtype=np.uint8)
    c[..., 0] = 250  # a red cast: a third domain
    model, _ = fit_domain_model([a, b], np.random.default_rng(1))
    fitted, report = add_domain(model, c, np.random.default_rng(2))
    np.testing.assert_array_equal(np.asarray(fitted["weights"])[:, :2], model["weights"])
    np.testing.assert_array_equal(np.asarray(fitted["bias"])[:2], model["bias"])
    assert fitted["mean"] == model["mean"] and fitted["std"] == model["std"]
    assert fitted["open_set"]["radii"][:2] == model["open_set"]["radii"]
    assert fitted["open_set"]["references"][:2] == model["open_set"]["references"]
    assert len(fitted["open_set"]["radii"]) == 3 and report["new_domain_named"] == 100.0


def test_bad_inputs_are_one_line_and_leave_the_bundle(mnist_bundle, colour_frames, adapted,
                                                      tmp_path):
    work = tmp_path / "b"
    shutil.copytree(mnist_bundle, work)
    before = digests(work)
    one_line(edge_calib("adapt", "--deploy", work, "--frames", colour_frames, "--domain",
                        "mnist", *QUICK), "already has this domain; pass --replace")
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(colour_frames.iterdir())[:5]:
        shutil.copy(p, few)
    one_line(edge_calib("adapt", "--deploy", work, "--frames", few, "--domain", "night", *QUICK),
             "5 frames; adapt needs at least 16")
    one_line(edge_calib("adapt", "--deploy", work, "--frames", tmp_path / "none", "--domain",
                        "night", *QUICK), "no such folder")
    one_line(edge_calib("adapt", "--deploy", work, "--frames", colour_frames, "--domain",
                        "unknown", *QUICK), "unknown")
    with open(work / ".adapt.lock", "w") as held:  # another adapt holds the bundle
        fcntl.flock(held, fcntl.LOCK_EX)
        one_line(edge_calib("adapt", "--deploy", work, "--frames", colour_frames, "--domain",
                            "night", *QUICK), "another `edge-calib adapt` is changing")
    assert digests(work) == before
    old = tmp_path / "old"  # a bundle exported before adapt existed: no source record
    shutil.copytree(mnist_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("source_stats")
    from edge_calib.deploy.bundle import Manifest, write_manifest
    write_manifest(old, Manifest.from_dict(manifest))
    one_line(edge_calib("adapt", "--deploy", old, "--frames", colour_frames, "--domain",
                        "night", *QUICK), "export it again")


def test_a_bundle_changed_meanwhile_is_not_swapped(mnist_bundle, colour_frames, tmp_path):
    """Another process rewrites the manifest between adapt's read and its swap: nothing is
    swapped, the staged files go, the calibrator is kept beside the bundle."""
    import dataclasses

    from edge_calib.core.errors import EdgeCalibError
    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.export import adapt as adapt_module
    from edge_calib.train.calibrate import CalibratorConfig

    work = tmp_path / "b"
    shutil.copytree(mnist_bundle, work)
    real_swap = adapt_module.swap_in

    def someone_else_writes_first(bundle, *args):
        other = open_bundle(work)
        other.manifest.provenance["note"] = "re-exported by someone else"
        other.save()
        return real_swap(bundle, *args)

    adapt_module.swap_in = someone_else_writes_first
    cfg = CalibratorConfig(epochs=1, batch_size=32, arch="curve", objective="stats")
    try:
        with pytest.raises(EdgeCalibError, match="changed while adapt ran"):
            adapt_module.adapt_bundle(adapt_module.AdaptRequest(
                work, colour_frames, "night", dataclasses.replace(cfg), progress=False))
    finally:
        adapt_module.swap_in = real_swap
    b = open_bundle(work)
    assert b.domains == ["mnist"] and b.manifest.provenance["note"]
    assert not list((work / "calibrators").iterdir()) and not list((work / "fused").iterdir())
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("domain_classifier")) == \
        ["domain_classifier.json"]
    assert (tmp_path / "b.night.calib.pt").is_file()


def test_a_read_only_bundle_is_one_line(mnist_bundle, colour_frames, tmp_path):
    from test_file_system import tmpfs

    with tmpfs(tmp_path / "ro", "128m") as disk:
        shutil.copytree(mnist_bundle, disk / "b")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        one_line(edge_calib("adapt", "--deploy", disk / "b", "--frames", colour_frames,
                            "--domain", "night", *QUICK), "cannot write into")


@contextlib.contextmanager
def watching_device(bundle, video, tmp_path):
    """``run --domain auto --watch`` on ``bundle`` over a looping real-time video, in a
    thread, serving frames when the block starts; yields (runner, its summary once stopped)
    and stops it with the control socket's ``quit``."""
    from edge_calib.runtime.control import send_command
    from edge_calib.runtime.sources import parse_source
    from edge_calib.runtime.stream import RunOptions, StreamRunner
    from helpers import wait_until

    sock = str(tmp_path / "c.sock")
    runner = StreamRunner(RunOptions(deploy=str(bundle), domain="auto", headless=True,
                                     control=sock, realtime=True, watch=True),
                          parse_source(None, str(video), fps=40, loop=True))
    result = {}
    thread = threading.Thread(target=lambda: result.update(runner.run().to_dict()))
    thread.start()
    try:
        wait_until(lambda: os.path.exists(sock) and runner.times.frames >= 5, thread)
        yield runner, result
    finally:
        send_command(sock, "quit")
        thread.join(timeout=60)


def test_replace_and_a_watching_device_picks_it_up(adapted, colour_frames, domain_video,
                                                   tmp_path):
    """A runtime with --watch reloads the bundle that adapt changed (a replaced domain), and
    the replaced domain's old files are gone."""
    work = tmp_path / "b"
    shutil.copytree(adapted[0], work)
    old_files = set(json.loads((work / "manifest.json").read_text())["domains"]["colour"]
                    ["calibrator"]["files"].values())
    with watching_device(work, domain_video[0], tmp_path) as (runner, result):
        proc = edge_calib("adapt", "--deploy", work, "--frames", colour_frames, "--domain",
                          "colour", "--replace", *QUICK)
        assert proc.returncode == 0, proc.stderr[-2000:]
        deadline = time.time() + 60
        while not runner.controller.reloads and time.time() < deadline:
            time.sleep(0.1)
    assert any(r["ok"] for r in result["reloads"]), result.get("reloads")
    assert result["error"] is None and "colour" in runner.controller.bundle.domains
    assert runner.controller.auto.domains == ["mnist", "colour"]  # the vote knows it too
    files = set(json.loads((work / "manifest.json").read_text())["domains"]["colour"]
                ["calibrator"]["files"].values())
    assert files.isdisjoint(old_files)
    assert not any((work / f).exists() for f in old_files)


def test_a_device_reloading_mid_swap_keeps_serving(mnist_bundle, adapted, domain_video,
                                                   tmp_path):
    """The swap is two atomic renames (manifest, then its hash): a reload that reads between
    them is refused and the old bundle keeps serving; the hash's arrival reloads the new one."""
    work = tmp_path / "b"
    shutil.copytree(mnist_bundle, work)
    new = adapted[0]
    for p in new.rglob("*"):  # the staged files first, as adapt writes them
        if p.is_file() and p.name not in ("manifest.json", "manifest.sha256", ".adapt.lock"):
            (work / p.relative_to(new)).parent.mkdir(exist_ok=True)
            shutil.copy(p, work / p.relative_to(new))
    with watching_device(work, domain_video[0], tmp_path) as (runner, result):
        shutil.copy(new / "manifest.json", work / "manifest.json")  # half-way through the swap
        deadline = time.time() + 30
        while not runner.controller.reloads and time.time() < deadline:
            time.sleep(0.1)
        frames = runner.times.frames
        time.sleep(0.5)
        assert runner.times.frames > frames  # still serving
        shutil.copy(new / "manifest.sha256", work / "manifest.sha256")
        deadline = time.time() + 30
        while not any(r["ok"] for r in runner.controller.reloads) and time.time() < deadline:
            time.sleep(0.1)
    first, last = result["reloads"][0], result["reloads"][-1]
    assert first["ok"] is False and "does not match" in first["error"]
    assert last["ok"] and result["error"] is None
    assert runner.controller.bundle.domains == ["mnist", "colour"]
    assert runner.controller.auto.domains == ["mnist", "colour"]


def test_a_reloaded_vote_keeps_its_window_by_domain_name():
    from edge_calib.runtime.domain_auto import UNKNOWN, AutoDomain, DomainModel

    def model(names):
        return DomainModel(names, np.zeros(2), np.ones(2), np.zeros((2, len(names))),
                           np.zeros(len(names)))

    old = AutoDomain(model(["day", "dusk"]), window=4)
    for vote in ("day", "dusk", UNKNOWN, "dusk"):
        old.update("day", vote)
    new = AutoDomain(model(["dusk", "night"]), window=4)
    new.carry_votes(old)
    assert [new.choices[k] for k in new.votes] == [UNKNOWN, "dusk", UNKNOWN, "dusk"]
