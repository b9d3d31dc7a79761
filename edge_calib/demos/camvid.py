"""``edge-calib demo camvid``: the day -> dusk loop on the real CamVid frames.

The same commands a user types, run one after the other and printed as they run: train the
LR-ASPP segmenter on the day frames, quantise it to INT8, score it on the dusk and day test
frames (source only, and per-frame histogram matching to the day frames, the classical
baseline that costs nothing to train), train the default calibrator on the unlabelled dusk
training frames against the INT8 segmenter, score it, export the bundle (dusk calibrator, day
identity, the auto-domain model), and run the test frames in sequence order (dusk, then day)
through ``edge-calib run --domain auto``. Each command's output is kept in the work folder and
the command is skipped when it is already there.

The segmenter here trains for minutes, not the hour of ``benchmarks/camvid.py``: its mIoU is
far below the benchmark's, and the numbers it prints are this run's, nothing more.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ..core.errors import EdgeCalibError
from ..core.fileio import write_json_atomic

SOURCE, TARGET = "camvid:day", "camvid:dusk"
# The recipe of the CamVid results (train/recipes.py): the curve calibrator trained to restore
# the frozen segmenter's source statistics
CURVE_RECIPE = ("--recipe", "statistics")
# Other families: the paper's segmentation setting (source weight 0.2) with the same extra
# terms (the previous recipe, before the curve family).
ADVERSARIAL_RECIPE = ("--w-source", "0.2", "--eps", "1.0", "--lr", "3e-3", "--d-lr", "3e-4",
                      "--w-consistency", "10", "--w-histogram", "10")


def restarts(epochs: int) -> tuple:
    """Three starts, the best by the unlabelled statistics distance continues: each start
    trains 15 of 80 epochs (scaled to shorter runs); none for a 1-epoch run."""
    return ("--restarts", "3", "--restart-epochs", str(max(1, epochs * 3 // 16))) \
        if epochs >= 2 else ()


@dataclass
class CamvidDemoConfig:
    work: Path
    data_root: Path
    arch: str = "curve"
    segmenter_epochs: int = 30
    train_scale: float = 1.0
    calibrator_epochs: int = 80
    eval_frames: int | None = None  # frames per domain scored, and for INT8 scales (None: all)
    quiet: bool = False


def _cli(args: list, out: Path, quiet: bool) -> dict:
    """Run ``edge-calib ARGS`` unless ``out`` (its JSON result) exists; return that result."""
    if out.exists():
        click.echo(f"  [reuse] {out.name}", err=True)
        return json.loads(out.read_text())
    args = [str(a) for a in args]
    click.echo(f"  [run] edge-calib {shlex.join(args)}", err=True)
    proc = subprocess.run([sys.executable, "-m", "edge_calib.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL if quiet else None, text=True)
    if proc.returncode != 0:
        raise EdgeCalibError(f"demo step `edge-calib {args[0]}` failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    write_json_atomic(out, result)
    return result


def run_camvid_demo(cfg: CamvidDemoConfig) -> dict:
    from ..data import load_dataset
    from ..runtime.testvideo import write_domain_video

    work, root = cfg.work, str(cfg.data_root)
    (work / "results").mkdir(parents=True, exist_ok=True)
    quiet = ["--quiet"] if cfg.quiet else []
    click.echo(f"edge-calib demo camvid: day -> dusk with a {cfg.arch} calibrator; work folder "
               f"{work}, data {root}", err=True)

    subset = [] if cfg.eval_frames is None else ["--max-samples", cfg.eval_frames]

    def step(name, args):
        return _cli([*args, "--data-root", root], work / "results" / f"{name}.json", cfg.quiet)

    def scores(name, model_args, extra=()):
        return {d: step(f"{name}_{d}", ["eval", *model_args, "--dataset", f"camvid:{d}",
                                        "--split", "test", "--json", *subset, *extra])
                for d in ("dusk", "day")}

    float_path, int8_path = work / "camvid_day.pt", work / "camvid_day_int8.pt"
    cal_path = work / f"dusk.{cfg.arch}.calib.pt"

    def resume(checkpoint: Path) -> list[str]:
        """--resume where an interrupted training left its state (or a start's), else --force."""
        states = checkpoint.parent.glob(checkpoint.name[:-3] + "*.state.pt")
        return ["--resume"] if any(states) else ["--force"]

    step("segmenter", ["train-classifier", "--dataset", SOURCE, "--arch", "lraspp_small",
                       "--out", float_path, "--epochs", cfg.segmenter_epochs, "--batch-size", 8,
                       "--lr", "2e-3", "--train-scale", cfg.train_scale, *resume(float_path),
                       *quiet])
    step("compress", ["compress", float_path, "--int8", "--calib-dataset", SOURCE,
                      "--out", int8_path, *subset, *quiet])
    table = {"source only": scores("source_only", ["--classifier", int8_path]),
             "histogram matching": scores("histogram", ["--classifier", int8_path],
                                          ["--photometric", "histogram", "--reference", SOURCE])}
    step("calibrator", ["train", "--classifier", int8_path, "--source", SOURCE, "--target",
                        TARGET, "--domain", "dusk", "--out", cal_path, "--epochs",
                        cfg.calibrator_epochs, "--batch-size", 8, "--calibrator-arch", cfg.arch,
                        *(CURVE_RECIPE + restarts(cfg.calibrator_epochs) if cfg.arch == "curve"
                          else ADVERSARIAL_RECIPE),
                        *resume(cal_path), *quiet])
    table[f"{cfg.arch} calibrator"] = scores("calibrated", ["--classifier", int8_path,
                                                             "--calibrator", cal_path])
    bundle = work / "bundle"
    step("export", ["export", "--classifier", int8_path, "--calibrator", f"dusk={cal_path}",
                    "--calibrator", "day=identity", "--out", bundle, "--force", *quiet])
    video = work / "camvid_test.avi"
    if not video.exists():
        write_domain_video(video, [(d, load_dataset(f"camvid:{d}", "test", root).images, None)
                                   for d in ("dusk", "day")], size=None, fps=15.0)
    stream = _cli(["run", "--input", video, "--deploy", bundle, "--domain", "auto",
                   "--headless", "--output", work / "annotated.mp4", "--predictions",
                   work / "predictions.jsonl", "--json"], work / "results" / "stream.json",
                  cfg.quiet)
    click.echo("\n" + miou_table(table))
    best = max(table, key=lambda k: table[k]["dusk"]["miou"])
    click.echo(f"Best on the dusk frames in this run: {best}. Deploy the calibrator where it "
               "beats the classical baseline on your frames (both ship in a bundle: "
               "`export --calibrator dusk=histogram` for histogram matching).")
    click.echo(f"\nStream: {stream['frames']} test frames (dusk, then day) through `edge-calib run "
               f"--domain auto`: {stream['fps']:.1f} FPS, {stream['switches']} "
               f"switch{'' if stream['switches'] == 1 else 'es'}; "
               f"annotated video {work / 'annotated.mp4'}")
    return {"miou": {k: {d: v[d]["miou"] for d in v} for k, v in table.items()},
            "stream": {k: stream[k] for k in ("frames", "fps", "switches", "switch_log")},
            "work": str(work)}


def miou_table(table: dict) -> str:
    some = next(iter(table.values()))
    lines = [f"CamVid test frames ({some['dusk']['n']} dusk, {some['day']['n']} day), mIoU % "
             "(11 classes): dusk is the new domain, day the source (retention)",
             f"{'':>22} {'dusk':>7} {'day':>7}"]
    for name, by_domain in table.items():
        dusk, day = by_domain["dusk"]["miou"], by_domain["day"]["miou"]
        lines.append(f"{name:>22} {dusk:>7.1f} {day:>7.1f}")
    return "\n".join(lines)
