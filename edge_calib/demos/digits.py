"""``edge-calib demo``: the whole loop on real digits, minutes on a 2-core CPU.

MNIST is the source domain (the "factory" camera); the new domain is the same digits seen by
another camera (``mnist:colour``: another colour response; or ``--target usps``, other
handwriting). Train a small DTN, compress it (2:4 + INT8), train the light calibrator against
the compressed model, export the ONNX Runtime bundle, write a video whose domain changes
mid-stream, run it headless with ``--domain auto``, and print the accuracy table and the
timing report. Every step keeps its output in the work folder and is skipped when the output is
already there (a different target or calibrator gets its own files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from ..core.errors import EdgeCalibError
from ..models.families import DEFAULT_ARCH


@dataclass
class DemoConfig:
    work: Path
    data_root: Path
    target: str = "mnist:colour"
    arch: str = DEFAULT_ARCH
    source_samples: int = 12000
    target_samples: int = 3000
    classifier_epochs: int = 2
    calibrator_epochs: int = 6
    frames_per_segment: int = 150
    segments: int = 4
    quiet: bool = False

    @property
    def domain(self) -> str:
        """The target's domain name in the bundle (mnist:colour -> colour)."""
        return self.target.split(":")[-1]


def _step(title: str, path: Path, make) -> Path:
    if path.exists():
        click.echo(f"  [reuse] {title}: {path}", err=True)
        return path
    click.echo(f"  [build] {title} ...", err=True)
    make()
    return path


def run_demo(cfg: DemoConfig) -> dict:
    from ..compress.pipeline import compress_classifier
    from ..data import load_dataset
    from ..export.bundle_builder import build_bundle
    from ..export.domain_model import bundle_domain_classifier
    from ..models.classifiers import default_input_spec
    from ..models.store import load_classifier
    from ..runtime.sources import parse_source
    from ..runtime.stream import RunOptions, StreamRunner
    from ..runtime.testvideo import (
        alternating_segments,
        score_predictions,
        write_domain_video,
    )
    from ..train.settings import CalibratorConfig
    from ..train.classifier import train_classifier
    from ..train.distributed import Distributed
    from ..train.jobs import DomainTask, SharedInputs, train_domain
    from ..train.loop import state_paths
    from ..train.tensors import DomainData, resolve_device

    work, root = cfg.work, cfg.data_root
    work.mkdir(parents=True, exist_ok=True)
    device = resolve_device("auto")
    spec = default_input_spec("dtn")
    progress = not cfg.quiet
    click.echo(f"edge-calib demo: MNIST -> {cfg.target} with a {cfg.arch} calibrator; work "
               f"folder {work}, data {root}, device {device}", err=True)
    target, name = cfg.target, cfg.domain
    data = {(n, s): load_dataset(n, s, root) for n in ("mnist", target) for s in ("train", "test")}
    domain = lambda n, s, k=None: DomainData(data[(n, s)].subset(k), spec)  # noqa: E731

    clf_path = work / "mnist_dtn.pt"
    _step("source classifier (DTN on MNIST)", clf_path, lambda: train_classifier(
        "dtn", spec, domain("mnist", "train", cfg.source_samples), domain("mnist", "test"),
        cfg.classifier_epochs, 128, 1e-3, 0, device, progress=progress).save(clf_path))
    int8_path = work / "mnist_dtn_int8.pt"
    _step("compressed classifier (2:4 + INT8)", int8_path, lambda: compress_classifier(
        load_classifier(clf_path), "2:4", True, domain("mnist", "train", 2048),
        test=domain("mnist", "test"), progress=progress).save(int8_path))
    cal_path = work / f"{name}.{cfg.arch}.calib.pt"

    def train_cal():  # as `edge-calib train` trains one domain
        clf = load_classifier(int8_path)
        shared = SharedInputs(str(int8_path), clf, "mnist",
                              domain("mnist", "train", cfg.target_samples),
                              domain("mnist", "test", 2000), "test", spec, root,
                              cfg.target_samples, 0, monitor_test=False)
        train_domain(DomainTask(name, target, cal_path),
                     CalibratorConfig(epochs=cfg.calibrator_epochs, lr=3e-4, d_lr=3e-4,
                                      arch=cfg.arch),
                     shared, device, Distributed(), resume=state_paths(cal_path)[0].exists(),
                     force=False, progress=progress)

    _step(f"{name} calibrator ({cfg.arch}, trained against the INT8 model)", cal_path, train_cal)
    bundle = work / f"bundle-{name}-{cfg.arch}"
    _step("deploy bundle (ONNX Runtime, INT8)", bundle / "manifest.json", lambda: build_bundle(
        str(int8_path), [(name, str(cal_path)), ("mnist", "identity")], bundle, "int8",
        force=True, domain_classifier=bundle_domain_classifier(root), data_root=root))
    video = work / f"stream-{name}.avi"

    def make_video():
        tests = {"mnist": data[("mnist", "test")], name: data[(target, "test")]}
        write_domain_video(video, alternating_segments(tests, cfg.frames_per_segment,
                                                       cfg.segments))

    _step(f"test video (MNIST and {name} segments)", video, make_video)
    truth = json.loads(video.with_suffix(".truth.json").read_text())
    results = {}
    for label, dom in (("auto (calibrated)", "auto"), ("source only", "mnist")):
        preds = work / f"predictions_{dom}.jsonl"
        runner = StreamRunner(RunOptions(deploy=str(bundle), domain=dom, headless=True,
                                         predictions=str(preds),
                                         outputs=(str(work / f"annotated_{dom}.avi"),)),
                              parse_source(None, str(video)))
        summary = runner.run()
        results[label] = {"summary": summary, "scores": score_predictions(preds, truth),
                          "report": runner.times.report(runner.counters_text())}
    table = accuracy_table(results)
    click.echo("\n" + table)
    click.echo("\n" + results["auto (calibrated)"]["report"])
    click.echo(f"\nOutputs in {work}: {bundle.name}/, {video.name} (+ .truth.json), "
               "annotated_auto.avi, predictions_auto.jsonl, predictions_mnist.jsonl, "
               "*.metrics.jsonl")
    return {"results": {k: {"scores": v["scores"], "fps": v["summary"].fps,
                            "switches": v["summary"].switch_log} for k, v in results.items()},
            "work": str(work)}


def accuracy_table(results: dict) -> str:
    auto, base = results["auto (calibrated)"]["scores"], results["source only"]["scores"]
    lines = ["Stream accuracy per true domain (frames of the test video):",
             f"{'domain':>8} {'frames':>7} {'source only':>12} {'calibrated':>11} {'auto-domain':>12}"]
    for d in sorted(auto):
        lines.append(f"{d:>8} {auto[d]['frames']:>7} {base[d]['accuracy']:>11.1f}% "
                     f"{auto[d]['accuracy']:>10.1f}% {auto[d].get('auto_frame_accuracy', 0):>11.1f}%")
    return "\n".join(lines)


def check_data(root: Path, target: str = "mnist:colour") -> None:
    from ..data import load_dataset

    try:
        for name in ("mnist", target):
            load_dataset(name, "test", root)
    except EdgeCalibError as exc:
        raise EdgeCalibError(f"demo needs MNIST and {target}: {exc}") from None
