#!/usr/bin/env python3
"""Which calibrator: accuracy against latency overhead, for every family and size.

    python benchmarks/calibrators.py classifiers                     # the frozen source models
    python benchmarks/calibrators.py accuracy --families all --sizes medium --seeds 0
    python benchmarks/calibrators.py baselines                       # histogram matching, AdaBN
    python benchmarks/calibrators.py int8 --families thumbnail,shallow  # INT8 calibrators
    python benchmarks/calibrators.py costs                           # nodes, MACs, latency
    python benchmarks/calibrators.py report                          # JSON, Markdown, plot

Accuracy: every run is an ``edge-calib`` CLI call stored under
``benchmarks/results/calibrators/accuracy/<classifier>/<task>/`` with its exact command, the
commit, the machine and the parsed result (``digits.py``'s ``Step``); a stored step is skipped
and a stopped calibrator training resumes, so the grid can be run over several sittings and
machines. All calibrators train with one budget (``--epochs``, ``--max-samples`` images per
domain, Adam lr 3e-4) and are reported at their last epoch: no target labels are looked at
until the final evaluation. Tasks: five photometric shifts of MNIST (``mnist:SHIFT``, see
``edge_calib/data/shifts.py``) and the two shape shifts MNIST <-> USPS.

Costs: ONNX node count, parameters and MACs of each calibrator graph, and its latency
overhead over the classifier alone (ONNX Runtime, CPU, 1 thread, batch 1, the fused graph;
median of per-round differences in one interleaved run) at 32x32 in front of the DTN (float
and INT8 2:4; in front of the INT8 one, each calibrator also quantised to INT8, rows
``family/size/int8``) and at 480x360 in front of the LR-ASPP MobileNetV3-Small segmenter.
``--frames`` adds, in the same interleaved run, the runtime's uint8 frame graphs of the same
graphs (``engines/frame_graph.py``: cast, normalisation and ArgMax inside; a curve reads its
table index from the frame's levels), rows ``frames:...`` against ``frames:classifier``.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import Step, common_arguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "calibrators"
SHIFTS = ("colour", "lowlight", "haze", "blur", "texture")
TASKS = {**{f"mnist-{s}": ("mnist", f"mnist:{s}") for s in SHIFTS},
         "mnist-usps": ("mnist", "usps"), "usps-mnist": ("usps", "mnist")}
PHOTOMETRIC = tuple(f"mnist-{s}" for s in SHIFTS)
FAMILIES = ("resnet", "pointwise", "thumbnail", "lowres", "shallow", "curve")
SIZES = ("small", "medium", "large")
# The paper's calibrator is resnet at width 8, 9 blocks: its "large" preset.
REFERENCE = ("resnet", "large")
# plain-r2: the plain recipe trained again on 2026-12-01 (the first plain checkpoint is gone and
# training on the CPU is not bit-reproducible across machines' thread counts): the runs that
# compare calibrators on it are gathered under its name
# augment: geometric augmentation (the flag was --augment before it took a kind); photometric:
# the sceptic's source model (issue 36), trained with --augment photometric
CLASSIFIERS = {"plain": [], "augment": ["--augment", "geometric"], "plain-r2": [],
               "photometric": ["--augment", "photometric"]}
RECIPE = ["--lr", "3e-4", "--d-lr", "3e-4"]
FRAMES = "frames:"  # the cost rows of the runtime's uint8 frame graphs


def classifier_path(work: Path, recipe: str, source: str) -> Path:
    return work / "classifiers" / f"{source}_dtn_{recipe}.pt"


def train_classifiers(args):
    for recipe, source in itertools.product(args.classifiers, ("mnist", "usps")):
        step = Step(RESULTS / "classifiers", args.data_root)
        out = classifier_path(Path(args.work), recipe, source)
        step(f"{source}_{recipe}", ["train-classifier", "--dataset", source, "--arch", "dtn",
                                    "--out", str(out), "--epochs", str(args.classifier_epochs),
                                    "--seed", "0", "--quiet", *CLASSIFIERS[recipe]])


def evaluate(step, name, model_args, dataset):
    return step(name, ["eval", *model_args, "--dataset", dataset, "--split", "test", "--json"])


def run_accuracy(args):
    families = FAMILIES if args.families == ["all"] else args.families
    for recipe, task, family, size, seed in itertools.product(
            args.classifiers, args.tasks, families, args.sizes, args.seeds):
        source, target = TASKS[task]
        clf = classifier_path(Path(args.work), recipe, source)
        if not clf.exists():
            sys.exit(f"{clf} missing: run `calibrators.py classifiers` first")
        step = Step(RESULTS / "accuracy" / recipe / task, args.data_root)
        work = Path(args.work) / "accuracy" / recipe / task
        train_and_evaluate(step, work, clf, task, family, size, seed, args)


def train_and_evaluate(step, work: Path, clf: Path, task: str, family: str, size: str, seed: int,
                       args) -> Path:
    """Source only, then one calibrator trained with the common budget and evaluated on the
    target and source test sets; returns the calibrator checkpoint."""
    from edge_calib.models.calibrators import parse_size

    source, target = TASKS[task]
    evaluate(step, "source_only_target", ["--classifier", str(clf)], target)
    evaluate(step, "source_only_source", ["--classifier", str(clf)], source)
    name = f"{family}_{size}{getattr(args, 'tag', '')}_s{seed}"
    out = work / f"{name}.calib.pt"
    exact = ",".join(f"{k}={v}" for k, v in parse_size(family, size).items())
    train = ["train", "--classifier", str(clf), "--source", source, "--target", target,
             "--domain", target.replace(":", "-"), "--out", str(out), "--epochs",
             str(args.epochs), "--max-samples", str(args.max_samples), "--seed", str(seed),
             "--calibrator-arch", family, "--calibrator-size", exact, "--quiet", *RECIPE,
             *shlex.split(getattr(args, "recipe", ""))]
    if (work / f"{name}.calib.state.pt").exists() and not out.exists():
        train.append("--resume")
    step(f"{name}_train", train)
    with_cal = ["--classifier", str(clf), "--calibrator", str(out)]
    evaluate(step, f"{name}_target", with_cal, target)
    evaluate(step, f"{name}_source", with_cal, source)
    return out


def run_baselines(args):
    """The corrections a user gets without a calibrator, on the same frozen classifier and
    tasks: per-frame histogram matching to the source's training images (``eval --photometric
    histogram``) and AdaBN (BatchNorm statistics re-estimated on ``--max-samples`` unlabelled
    target training images; it changes the deployed model), each on the target and source test
    sets."""
    for recipe, task in itertools.product(args.classifiers, args.tasks):
        source, target = TASKS[task]
        clf = classifier_path(Path(args.work), recipe, source)
        if not clf.exists():
            sys.exit(f"{clf} missing: run `calibrators.py classifiers` first")
        step = Step(RESULTS / "accuracy" / recipe / task, args.data_root)
        evaluate(step, "source_only_target", ["--classifier", str(clf)], target)
        evaluate(step, "source_only_source", ["--classifier", str(clf)], source)
        matched = ["--classifier", str(clf), "--photometric", "histogram", "--reference", source]
        evaluate(step, "histogram_target", matched, target)
        evaluate(step, "histogram_source", matched, source)
        adapted = Path(args.work) / "accuracy" / recipe / task / "adabn.pt"
        step("adabn", ["adabn", "--classifier", str(clf), "--target", target, "--out",
                       str(adapted), "--max-samples", str(args.max_samples)])
        evaluate(step, "adabn_target", ["--classifier", str(adapted)], target)
        evaluate(step, "adabn_source", ["--classifier", str(adapted)], source)


def run_int8(args):
    """INT8 calibrators in front of the INT8 2:4 DTN: each calibrator is trained against the
    INT8 classifier, then quantised (``edge-calib compress CAL --int8``, scales from its target
    training images) and evaluated again in torch (fake quantisation) and as deployed (the
    fused INT8 graph of an exported bundle, ONNX Runtime)."""
    work = Path(args.work)
    float_clf = classifier_path(work, "plain", "mnist")
    clf = work / "classifiers" / "mnist_dtn_plain_int8.pt"
    Step(RESULTS / "int8", args.data_root)(
        "classifier", ["compress", str(float_clf), "--prune", "2:4", "--int8", "--calib-dataset",
                       "mnist", "--out", str(clf), "--quiet"])
    for task, family, seed in itertools.product(args.tasks, args.families, args.seeds):
        if TASKS[task][0] != "mnist":
            sys.exit(f"{task}: the INT8 runs use the MNIST classifier")
        target = TASKS[task][1]
        step = Step(RESULTS / "int8" / task, args.data_root)
        cal = train_and_evaluate(step, work / "int8" / task, clf, task, family, "medium", seed,
                                 args)
        name = f"{family}_medium_s{seed}"
        quantised = cal.with_name(f"{name}_int8.calib.pt")
        step(f"{name}_int8_compress", ["compress", str(cal), "--int8", "--out", str(quantised),
                                       "--quiet"])
        with_cal = ["--classifier", str(clf), "--calibrator", str(quantised)]
        evaluate(step, f"{name}_int8_target", with_cal, target)
        evaluate(step, f"{name}_int8_source", with_cal, "mnist")
        bundle = cal.with_name(f"{name}_int8_bundle")
        domain = target.replace(":", "-")
        step(f"{name}_int8_export", ["export", "--classifier", str(clf), "--calibrator",
                                     f"{domain}={quantised}", "--no-auto-domain", "--out",
                                     str(bundle), "--force", "--quiet"])
        evaluate(step, f"{name}_int8_deployed_target", ["--deploy", str(bundle), "--domain",
                                                        domain, "--fused"], target)


def _session(model, threads: int = 1):
    """A CPU session of an ``onnx.ModelProto`` through the toolkit's ``make_session``."""
    from edge_calib.deploy.ort_session import make_session

    return make_session(model.graph.name or "graph", threads, model=model.SerializeToString())


def _random_calibrator(arch: str, size: str, spec, seed: int = 0):
    """A calibrator with random weights: latency does not depend on the values, and a trained
    one of every family and size at 480x360 does not exist yet."""
    import torch

    from edge_calib.models.calibrators import make_calibrator, parse_size
    from edge_calib.models.records import CalibratorRecord
    from edge_calib.models.store import Calibrator

    torch.manual_seed(seed)
    module = make_calibrator({"arch": arch, **parse_size(arch, size), "eps": 0.5},
                             spec.channels, spec.lo, spec.hi).eval()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return Calibrator(module, CalibratorRecord(domain=f"{arch}-{size}",
                                               classifier_fingerprint="random", input_spec=spec,
                                               fingerprint="random"))


def _quantised(cal, images):
    """``cal`` quantised to INT8 with scales from ``images`` (64 training images of a real
    domain; latency does not depend on the scale values)."""
    from edge_calib.compress.calibrator import quantise_calibrator

    q = quantise_calibrator(cal, images, calib_batches=8, batch_size=8)
    q.meta.fingerprint = "random"
    return q


def backbones(args) -> dict:
    """name -> (Classifier, description, images for INT8 calibrator scales) for the fronts the
    calibrators are measured in. A segmenter checkpoint is measured at ``--segmenter-size``
    (LR-ASPP is fully convolutional: weights trained at another size run at this one)."""
    import dataclasses

    import torch

    from edge_calib.models.classifiers import build_classifier
    from edge_calib.models.store import Classifier, load_classifier
    from edge_calib.core.spec import InputSpec

    out = {}
    for path, label in ((args.classifier, "DTN float, 32x32"),
                        (args.int8_classifier, "DTN INT8 2:4, 32x32")):
        if path:
            out[label] = (load_classifier(path), f"checkpoint {Path(path).name}", "mnist:colour")
    height, width = (int(v) for v in args.segmenter_size.split("x"))
    for path in (args.segmenter, args.int8_segmenter):
        if path:
            seg = load_classifier(path)
            trained = f"{seg.spec.width}x{seg.spec.height}"
            seg.spec = dataclasses.replace(seg.spec, height=height, width=width)
            precision = "INT8 2:4" if (seg.compression or {}).get("int8") else "float"
            out[f"LR-ASPP MobileNetV3-Small {precision}, {width}x{height}"] = (
                seg, f"checkpoint {Path(path).name}, trained at {trained}", "camvid:dusk")
    if not args.segmenter:
        torch.manual_seed(0)
        module = build_classifier("lraspp_small", 11).eval()
        camera = InputSpec(height, width, 3, (0.5,) * 3, (0.5,) * 3)
        seg = Classifier(module, "lraspp_small", camera, 11, [str(i) for i in range(11)])
        out[f"LR-ASPP MobileNetV3-Small float, {width}x{height}"] = (
            seg, "random weights (the CamVid segmenter's architecture, untrained)", "camvid:dusk")
    return out


def run_costs(args):
    """Static costs and paired latency overhead of every family and size, per backbone."""
    import numpy as np

    from edge_calib.bench.graphs import graph_costs
    from edge_calib.bench.latency import Config, measure
    from edge_calib.bench.roofline import project
    from edge_calib.engines.frame_graph import CLASSES, FRAME, frame_graph
    from edge_calib.export.onnx_graphs import export_calibrator, export_classifier, fuse
    from edge_calib.core.fileio import write_json_atomic
    from edge_calib.core.provenance import capture as provenance
    from edge_calib.train.tensors import load_domain

    report = {"method": {"backend": "onnxruntime CPUExecutionProvider", "threads": 1,
                         "batch": 1, "warmup": args.warmup,
                         "statistic": "overhead = median over interleaved rounds of (fused graph "
                                      "- classifier alone), same run"},
              "provenance": provenance(), "backbones": {}}
    families = FAMILIES if args.families == ["all"] else args.families
    for name, (clf, origin, images) in backbones(args).items():
        spec = clf.spec
        cls_graph = export_classifier(clf, "onnxruntime")
        x = np.random.default_rng(0).uniform(-1, 1, (1, *spec.shape)).astype(np.float32)
        feeds = {"input": x}
        sessions = {"classifier": _session(cls_graph)}
        static = {"classifier": graph_costs(cls_graph) | {"nodes": len(cls_graph.graph.node)}}
        frame = {FRAME: np.random.default_rng(0).integers(0, 256, (1, spec.height, spec.width,
                                                                   spec.channels), np.uint8)}
        frame_sessions = {}  # the runtime's uint8 frame graphs of the same fused graphs

        def add_frame_graph(key, model):
            wrapped = frame_graph(model, spec, clf.task)
            static[f"{FRAMES}{key}"] = {"frame_graph_nodes": len(wrapped.graph.node)}
            frame_sessions[f"{FRAMES}{key}"] = _session(wrapped)

        if args.frames:
            add_frame_graph("classifier", cls_graph)
        int8_images = None
        if (clf.compression or {}).get("int8"):  # INT8 calibrators' scales, loaded once
            int8_images = load_domain(images, "train", args.data_root, spec, 64, 0,
                                      unlabelled=True)
        for arch, size in itertools.product(families, args.sizes):
            cal = _random_calibrator(arch, size, spec)
            variants = {f"{arch}/{size}": cal}
            if int8_images is not None:  # and the same calibrator quantised to INT8
                variants[f"{arch}/{size}/int8"] = _quantised(cal, int8_images)
            for key, variant in variants.items():
                graph = export_calibrator(variant)
                static[key] = graph_costs(graph) | {"nodes": len(graph.graph.node)}
                fused = fuse(graph, cls_graph, key)
                sessions[key] = _session(fused)
                if args.frames:
                    add_frame_graph(key, fused)
        configs = [Config(k, "fused", k, lambda s=s, f=feeds: s.run(None, f))
                   for k, s in sessions.items()]
        configs += [Config(k, "fused", k, lambda s=s: s.run([CLASSES], frame))
                    for k, s in frame_sessions.items()]
        rounds = args.rounds if spec.height * spec.width <= 64 * 64 else args.rounds_large
        print(f"{name}: {len(configs)} graphs x {rounds} interleaved rounds", file=sys.stderr)
        samples = measure(configs, rounds, args.warmup)
        rows = {}
        for key, cost in static.items():
            lat = np.asarray(samples[key])
            row = {**cost, "latency_median_ms": float(np.median(lat))}
            alone = f"{FRAMES}classifier" if key.startswith(FRAMES) else "classifier"
            if key != alone:
                base = np.asarray(samples[alone])
                paired = lat - base
                row |= {"overhead_ms": float(np.median(paired)),
                        "overhead_pct": float(100 * np.median(paired) / np.median(base)),
                        "overhead_pct_iqr": [float(100 * np.percentile(paired, q) / np.median(base))
                                             for q in (25, 75)],
                        "macs_pct": (100.0 * cost["macs"] / static["classifier"]["macs"]
                                     if "macs" in cost else None)}
            rows[key] = row
        report["backbones"][name] = {
            "classifier": origin, "input": list(spec.shape), "rounds": rounds, "rows": rows,
            "jetson_estimate": project({k: v for k, v in static.items() if "macs" in v})}
    out = Path(args.out)
    write_json_atomic(out / "costs.json", report)
    print(f"wrote {out / 'costs.json'}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = common_arguments("calibrators")
    common.add_argument("--classifiers", type=lambda s: s.split(","), default=["plain"],
                        help=f"Source-model recipes: {', '.join(CLASSIFIERS)}.")
    p = sub.add_parser("classifiers", parents=[common])
    p.add_argument("--classifier-epochs", type=int, default=3)
    p = sub.add_parser("accuracy", parents=[common])
    p.add_argument("--tasks", type=lambda s: list(TASKS) if s == "all" else s.split(","),
                   default=list(TASKS))
    p.add_argument("--families", type=lambda s: s.split(","), default=["all"])
    p.add_argument("--sizes", type=lambda s: s.split(","), default=["medium"])
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-samples", type=int, default=10000)
    p.add_argument("--recipe", default="", help="Further `edge-calib train` flags, e.g. "
                   "\"--objective stats\" (the runs' names get --tag).")
    p.add_argument("--tag", default="", help="Suffix of the runs' names (a recipe's).")
    p = sub.add_parser("baselines", parents=[common])
    p.add_argument("--tasks", type=lambda s: list(TASKS) if s == "all" else s.split(","),
                   default=list(PHOTOMETRIC))
    p.add_argument("--max-samples", type=int, default=10000,
                   help="Target training images AdaBN re-estimates BatchNorm on.")
    p = sub.add_parser("int8", parents=[common])
    p.add_argument("--tasks", type=lambda s: s.split(","), default=list(PHOTOMETRIC))
    p.add_argument("--families", type=lambda s: s.split(","), default=["thumbnail"])
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-samples", type=int, default=10000)
    p = sub.add_parser("costs", parents=[common])
    p.add_argument("--classifier", help="Float DTN checkpoint [default: the plain MNIST one].")
    p.add_argument("--int8-classifier", help="INT8 2:4 DTN checkpoint.")
    p.add_argument("--segmenter", help="Segmenter checkpoint [default: untrained LR-ASPP].")
    p.add_argument("--int8-segmenter", help="INT8 2:4 segmenter checkpoint.")
    p.add_argument("--segmenter-size", default="360x480", help="HxW the segmenters run at.")
    p.add_argument("--families", type=lambda s: s.split(","), default=["all"])
    p.add_argument("--sizes", type=lambda s: s.split("/"), default=list(SIZES),
                   help="Presets or key=value,... settings, separated by '/'.")
    p.add_argument("--frames", action="store_true",
                   help=f"Also the runtime's uint8 frame graphs (rows '{FRAMES}...', overhead "
                        f"over '{FRAMES}classifier'), in the same interleaved run.")
    p.add_argument("--rounds", type=int, default=400, help="Interleaved rounds at 32x32.")
    p.add_argument("--rounds-large", type=int, default=40, help="Interleaved rounds at 480x360.")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", default=str(RESULTS / "costs"))
    sub.add_parser("report")
    args = parser.parse_args()
    if args.cmd == "costs" and not args.classifier:
        args.classifier = str(classifier_path(Path(args.work), "plain", "mnist"))
    if args.cmd == "classifiers":
        train_classifiers(args)
    elif args.cmd == "accuracy":
        run_accuracy(args)
    elif args.cmd == "baselines":
        run_baselines(args)
    elif args.cmd == "int8":
        run_int8(args)
    elif args.cmd == "costs":
        run_costs(args)
    elif args.cmd == "report":
        from report_calibrators import write_report

        write_report(RESULTS, ROOT / "RESULTS.md")


if __name__ == "__main__":
    main()
