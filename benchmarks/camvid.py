#!/usr/bin/env python3
"""CamVid day -> dusk: a frozen, compressed segmenter on real road frames, with and without
calibrators, against AdaBN and classical photometric baselines.

    python benchmarks/camvid.py segmenter          # 480x360, the 305 day frames (resumable)
    python benchmarks/camvid.py compress           # 2:4 + INT8
    python benchmarks/camvid.py baselines          # source only, AdaBN, histogram, gain/gamma
    python benchmarks/camvid.py calibrators --families curve --seeds 0,1,2 --recipe "..." --tag T
    python benchmarks/camvid.py deploy             # bundle, test-frame video, run, bench
    python benchmarks/camvid.py distances          # unlabelled criteria on the dusk training frames
    python benchmarks/camvid.py report

The protocol of ``../shared/data/camvid/README.md``: source = day training frames (labelled),
day validation frames for the source model; target = the 62 dusk training frames, labels never
read; report mIoU, per-class IoU and pixel accuracy on the 62 dusk test frames and, for
retention, on the 171 day test frames. Each step is an ``edge-calib`` CLI call stored under
``benchmarks/results/camvid/`` with its command, commit and machine (``digits.py``'s Step).
``--augment`` before any subcommand's options runs the same steps on the segmenter trained with
photometric augmentation (``train-classifier --augment photometric``): models under
``<work>/augment/``, records under ``benchmarks/results/camvid_augment/`` with the same names.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import Step, common_arguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "camvid"
RESULTS_AUGMENT = ROOT / "benchmarks" / "results" / "camvid_augment"
SOURCE, TARGET = "camvid:day", "camvid:dusk"


def paths(work: Path) -> dict:
    """The segmenter's checkpoints in a work folder."""
    return {"float": work / "camvid_day.pt", "int8": work / "camvid_day_int8.pt",
            "adabn": work / "camvid_dusk_adabn.pt"}


def evaluate(step, name, model_args, extra=()):
    """The same model on the dusk test frames (target), the day test frames (retention) and
    the day validation frames (retention on the source model's own sequence, 0016E5)."""
    return {key: step(f"{name}_{key}", ["eval", *model_args, "--dataset", f"camvid:{domain}",
                                        "--split", split, "--json", *extra])
            for key, domain, split in (("dusk", "dusk", "test"), ("day", "day", "test"),
                                       ("dayval", "day", "val"))}


def run_segmenter(args, step):
    """LR-ASPP at the frames' full 480x360, trained on random 384x288 crops (scale jitter,
    flips, ENet class weights); ``--augment`` adds photometric augmentation."""
    step("segmenter", [
        "train-classifier", "--dataset", SOURCE, "--arch", "lraspp_small", "--input-size",
        "360x480", "--crop", "288x384", "--out", str(paths(Path(args.work))["float"]),
        "--epochs", str(args.epochs), "--batch-size", "8", "--lr", "2e-3", "--quiet",
        *(["--augment", "photometric"] if args.augment else []),
        *(["--resume"] if args.resume else [])])


def run_compress(args, step):
    p = paths(Path(args.work))
    evaluate(step, "float", ["--classifier", str(p["float"])])
    step("compress", ["compress", str(p["float"]), "--prune", "2:4", "--int8",
                            "--calib-dataset", SOURCE, "--finetune-epochs",
                            str(args.finetune_epochs), "--finetune-lr", "5e-4", "--out",
                            str(p["int8"]), "--quiet"])
    evaluate(step, "source_only", ["--classifier", str(p["int8"])])


def run_baselines(args, step):
    """AdaBN (BatchNorm statistics re-estimated on the unlabelled dusk training frames) on the
    float segmenter, compared with the float segmenter: the compressed one has its BatchNorm
    folded into 2:4-pruned, fine-tuned weights, so AdaBN would need the pruning fine-tune
    redone without labels. And two corrections that cost nothing to train, in front of the
    deployed (compressed) segmenter."""
    p = paths(Path(args.work))
    step("adabn", ["adabn", "--classifier", str(p["float"]), "--target", TARGET, "--out",
                         str(p["adabn"])])
    evaluate(step, "adabn_float", ["--classifier", str(p["adabn"])])
    int8 = ["--classifier", str(p["int8"])]
    evaluate(step, "histogram", int8, ["--photometric", "histogram", "--reference",
                                             SOURCE])
    evaluate(step, "gain_gamma", int8, ["--photometric", "gain-gamma", "--reference",
                                              SOURCE, "--fit", TARGET])
    # the correction a user can ship: histogram matching as a bundle entry (to the source
    # pixels recorded with the model, 64 knots), run by ONNX Runtime as deployed
    bundle = Path(args.work) / "histogram_bundle"
    step("histogram_bundle", ["export", *int8, "--calibrator", f"dusk=histogram:{TARGET}",
                                    "--no-auto-domain", "--out", str(bundle), "--force",
                                    "--quiet"])
    evaluate(step, "histogram_deployed", ["--deploy", str(bundle), "--domain", "dusk"])


def run_calibrators(args, step):
    """Calibrators against the compressed segmenter at its input size: the paper's setting
    (feature discriminator on the softmax map, source weight 0.2) with the flags given, and a
    ``--recipe`` of further training flags (e.g. the stats objective's)."""
    p = paths(Path(args.work))
    for family in args.families:
        for seed in args.seeds:
            name = f"{family}{args.tag}_s{seed}"
            out = Path(args.work) / "calibrators" / f"dusk_{name}.calib.pt"
            train = ["train", "--classifier", str(p["int8"]), "--source", SOURCE, "--target",
                     TARGET, "--domain", "dusk", "--out", str(out), "--epochs", str(args.epochs),
                     "--batch-size", "8", "--seed", str(seed), "--calibrator-arch", family,
                     "--w-source", "0.2", "--lr", args.lr, "--d-lr", "3e-4", "--eps", str(args.eps),
                     "--quiet"]
            for flag, weight in (("--w-consistency", args.w_consistency),
                                 ("--w-histogram", args.w_histogram)):
                train += [flag, str(weight)] if weight else []
            train += shlex.split(args.recipe)
            if not out.exists() and any(out.parent.glob(out.name[:-3] + "*.state.pt")):
                train.append("--resume")
            step(f"{name}_train", train)
            evaluate(step, name, ["--classifier", str(p["int8"]), "--calibrator", str(out)])


def run_deploy(args, step):
    """The bundle (dusk calibrator + day identity + the auto-domain model), a video of the test
    frames in sequence order (0001TP at dusk, then Seq05VD by day, 480x360 as filmed), the
    runtime on it with --domain auto, bench at the network's input size, and a picture of a
    dusk and a day frame of the runtime's output."""
    sys.path.insert(0, str(ROOT))
    from edge_calib.data import load_dataset
    from edge_calib.runtime.testvideo import write_domain_video

    p, work = paths(Path(args.work)), Path(args.work)
    cal = work / "calibrators" / f"dusk_{args.calibrator}.calib.pt"
    bundle = work / "deploy"
    step("export", ["export", "--classifier", str(p["int8"]), "--calibrator", f"dusk={cal}",
                    "--calibrator", "day=identity", "--out", str(bundle), "--force", "--quiet",
                    "--data-root", args.data_root])
    video = work / "camvid_test.avi"
    if not video.exists():
        write_domain_video(video, [(d, load_dataset(f"camvid:{d}", "test", args.data_root).images,
                                    None) for d in ("dusk", "day")], size=None, fps=15.0)
    step("stream", ["run", "--input", str(video), "--deploy", str(bundle), "--domain", "auto",
                    "--headless", "--threads", "1", "--output", str(work / "annotated.mp4"),
                    "--predictions", str(work / "stream_predictions.jsonl"), "--json"])
    step("bench", ["bench", "--deploy", str(bundle), "--report", str(step.folder / "bench"),
                   "--threads", "1", "--batch", "1", "--iterations", "100", "--video", str(video),
                   "--json", "--data-root", args.data_root])
    stream_picture(work / "annotated.mp4", step.folder / "stream_frames.jpg")


def stream_picture(video: Path, out: Path, frames=(31, 62 + 85)) -> None:
    """A dusk and a day frame of the runtime's annotated output, side by side (the middle of
    each sequence: 62 dusk frames, then 171 day ones)."""
    import cv2

    capture, picked = cv2.VideoCapture(str(video)), {}
    index, (ok, frame) = 0, capture.read()
    while ok and len(picked) < len(frames):
        if index in frames:
            picked[index] = frame
        index, (ok, frame) = index + 1, capture.read()
    capture.release()
    if len(picked) != len(frames):
        sys.exit(f"{video}: only {index} frames, cannot pick {frames}")
    cv2.imwrite(str(out), cv2.hconcat([picked[i] for i in frames]))


def run_distances(args, step):
    """Unlabelled criteria for comparing calibrators, on the 62 dusk *training* frames as the
    frozen network receives them, raw, histogram-matched and through every calibrator in the
    work folder: ``pixel_w1``, their distance to the day training frames' pixel distribution
    (``edge_calib.core.metrics.pixel_distance``), and ``stats_distance``, the source-statistics
    distance of the compressed segmenter's activations on them (``train.source_stats``). No
    label is read."""
    sys.path.insert(0, str(ROOT))
    import dataclasses
    import time

    import numpy as np
    import torch
    from steps import git_commit, write_record

    from edge_calib.data import load_dataset
    from edge_calib.core.metrics import pixel_distance
    from edge_calib.models.store import load_calibrator, load_classifier
    from edge_calib.imaging.photometric import HistogramMatch
    from edge_calib.train.source_stats import stats_distance
    from edge_calib.train.tensors import DomainData

    code, started = git_commit(ROOT), time.time()
    clf = load_classifier(paths(Path(args.work))["int8"])
    spec, stats = clf.spec, clf.source_stats

    def unlabelled(dataset):
        images = load_dataset(dataset, "train", args.data_root,
                              image_size=(spec.height, spec.width))
        return dataclasses.replace(images, labels=None)  # never read

    day_images, dusk_images = unlabelled(SOURCE), unlabelled(TARGET)
    day = DomainData(day_images, spec)
    day = day.batch(np.arange(len(day)), "cpu").numpy()
    matched = dataclasses.replace(
        dusk_images, images=HistogramMatch(day_images.images)(dusk_images.images))

    def criteria(images, calibrator=None):
        data = DomainData(images, spec)
        with torch.no_grad():
            x = data.batch(np.arange(len(data)), "cpu")
            x = x if calibrator is None else calibrator(x)
        return {"pixel_w1": round(pixel_distance(x.numpy(), day), 4),
                "stats_distance": round(stats_distance(clf.module, data, stats, calibrator), 4)}

    result = {"raw": criteria(dusk_images), "histogram": criteria(matched)}
    for cal_path in sorted((Path(args.work) / "calibrators").glob("dusk_*.calib.pt")):
        name = cal_path.name.removeprefix("dusk_").removesuffix(".calib.pt")
        result[name] = criteria(dusk_images, load_calibrator(cal_path).module.eval())
    command = "python benchmarks/camvid.py" + (" --augment" if args.augment else "") + " distances"
    write_record(step.folder / "distances.json", "distances", command, code, started, result)
    print("\n".join(f"{k}: {v}" for k, v in result.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--augment", action="store_true",
                        help="The segmenter trained with --augment photometric: models under "
                             "<work>/augment, records under results/camvid_augment.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = common_arguments("camvid_full")
    p = sub.add_parser("segmenter", parents=[common])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--resume", action="store_true")
    p = sub.add_parser("compress", parents=[common])
    p.add_argument("--finetune-epochs", type=int, default=20,
                   help="Supervised fine-tuning on the day frames with the 2:4 masks fixed.")
    sub.add_parser("baselines", parents=[common])
    p = sub.add_parser("calibrators", parents=[common])
    p.add_argument("--families", type=lambda s: s.split(","), default=["thumbnail", "resnet"])
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--eps", type=float, default=0.5, help="The calibrator's bound (normalised "
                   "units; 0.5 = a quarter of the pixel range).")
    p.add_argument("--lr", default="3e-4", help="The calibrator's learning rate.")
    p.add_argument("--w-consistency", type=float, default=0.0,
                   help="Source-consistency weight (0: the paper's setting).")
    p.add_argument("--w-histogram", type=float, default=0.0,
                   help="Pixel-histogram weight (0: the paper's setting).")
    p.add_argument("--recipe", default="", help="Further `edge-calib train` flags, e.g. "
                   "\"--objective stats --w-stats 3 --calibrator-size large --ema 0.95\".")
    p.add_argument("--tag", default="", help="Suffix of the runs' names (a variant's recipe).")
    p = sub.add_parser("deploy", parents=[common])
    p.add_argument("--calibrator", default="thumbnail_eps1_lr3e3_cons10_hist10_e40_s0",
                   help="Which trained dusk calibrator.")
    sub.add_parser("distances", parents=[common])
    sub.add_parser("report")
    args = parser.parse_args()
    if args.cmd == "report":
        from report_camvid import write_report

        write_report(RESULTS, ROOT / "RESULTS.md", RESULTS_AUGMENT)
        return
    if args.augment:
        args.work = str(Path(args.work) / "augment")
    step = Step(RESULTS_AUGMENT if args.augment else RESULTS, args.data_root)
    {"segmenter": run_segmenter, "compress": run_compress, "baselines": run_baselines,
     "calibrators": run_calibrators, "deploy": run_deploy, "distances": run_distances}[args.cmd](args, step)


if __name__ == "__main__":
    main()
