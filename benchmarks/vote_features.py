"""The auto-domain vote's two candidate feature kinds compared (issue 33, item 2): the image
statistics of a thumbnail that ``run`` uses (``imaging.domain_features``, 50 numbers) and the
frozen model's own activation statistics (per-channel mean and standard deviation over the
frame of the inputs of its 2nd and 3rd tapped layers: what the ``stats`` objective compares).

Both go through the same open-set rule, so only the features differ: standardised by the known
domains' frames, references = every known frame as stored and through a stream's codec
(``render_like_a_stream(camera=False)``, as ``fit_domain_model``), radius by blocked 5-fold
cross-validation (``fit_novelty``), a frame ``unknown`` when it lies beyond every domain's
radius. Reported: the share of each real test set voted unknown (known domains: false alarms;
new domains: detections), on the models the adaptation loop uses (``benchmarks/results/
adapt_loop/README.md``): the CamVid LR-ASPP at 180x240 (INT8) and the MNIST DTN (INT8).

Cost, per frame at batch 1 on one ONNX Runtime thread: the thumbnail features (OpenCV, the
vote's feature stage), and the frozen model's deployed graph with the activation moments added
as outputs (ReduceMean of the tapped tensors and their squares), timed interleaved against
the same graph without them (medians, paired difference).

    python benchmarks/vote_features.py --data-root ../shared/data \
        --camvid runs/adapt/seg_int8.pt --camvid-bundle runs/adapt/day_bundle \
        --digits runs/adapt/mnist_int8.pt --digits-bundle runs/adapt/mnist_bundle

writes ``benchmarks/results/vote_features/report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_calib.bench.latency import Config, measure  # noqa: E402
from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from edge_calib.core.provenance import capture, git_commit  # noqa: E402
from edge_calib.data import load_dataset  # noqa: E402
from edge_calib.deploy.bundle import open_bundle  # noqa: E402
from edge_calib.deploy.ort_session import make_session  # noqa: E402
from edge_calib.export.domain_model import render_like_a_stream  # noqa: E402
from edge_calib.imaging.domain_features import (fit_novelty, frame_features,  # noqa: E402
                                                novelty_ratios)
from edge_calib.models.store import load_classifier  # noqa: E402
from edge_calib.train.source_stats import activation_taps  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "vote_features"
LAYERS = (1, 2)  # the tapped layers whose inputs give the activation features (0 is the image)


def activation_features(clf, frames: np.ndarray, chunk: int = 32) -> np.ndarray:
    """uint8 (N, H, W, C) frames at the model's input -> (N, F): per channel of each tapped
    input in LAYERS, its mean and standard deviation over the frame."""
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), chunk):
            x = torch.from_numpy(clf.spec.preprocess(frames[i:i + chunk]))
            with activation_taps(clf.module) as taps:
                clf.module(x)
            parts = []
            for k in LAYERS:
                t = taps[k].double()
                parts += [t.mean((2, 3)), t.std((2, 3))]
            out.append(torch.cat(parts, 1).float().numpy())
    return np.concatenate(out)


def open_set(featurise, known: list[np.ndarray], rng: np.random.Generator):
    """The rule of ``fit_domain_model`` on features ``featurise(frames)``: returns a function
    frames -> share voted unknown (%)."""
    parts = []
    for frames in known:
        stored, codec = featurise(frames), featurise(render_like_a_stream(frames, rng, camera=False))
        parts.append((np.concatenate([stored, codec]), np.tile(np.arange(len(frames)), 2)))
    everything = np.concatenate([f for f, _ in parts])
    mean, std = everything.mean(0), everything.std(0) + 1e-6
    fitted, _ = fit_novelty([((f - mean) / std, order) for f, order in parts])
    refs = [np.asarray(r, np.float32) for r in fitted["references"]]
    radii = np.asarray(fitted["radii"])

    def unknown_pct(frames: np.ndarray) -> float:
        z = ((featurise(frames) - mean) / std).astype(np.float32)
        ratios = novelty_ratios(z, refs, radii, fitted["k"])
        return round(float((ratios > 1).all(1).mean() * 100), 1)
    return unknown_pct


def compare(clf, known: dict[str, np.ndarray], tests: dict[str, np.ndarray]) -> dict:
    kinds = {"thumbnail": frame_features,
             "activations": lambda f: activation_features(clf, f)}
    out = {}
    for kind, featurise in kinds.items():
        unknown = open_set(featurise, list(known.values()), np.random.default_rng(0))
        out[kind] = {name: unknown(frames) for name, frames in tests.items()}
    return out


def tapped_tensors(graph: onnx.ModelProto, count: int) -> list[str]:
    """The float tensors entering the graph's 2nd, 3rd, ... Conv nodes (in node order) that
    are not pooled (``activation_taps`` skips a squeeze-excite's 1x1 input too): a Conv's
    input, or for a quantised Conv (DequantizeLinear(QuantizeLinear(t))) the tensor t."""
    made = {o: n for n in graph.graph.node for o in n.output}
    names = []
    for conv in [n for n in graph.graph.node if n.op_type == "Conv"][1:]:
        name = conv.input[0]
        if made.get(name) is not None and made[name].op_type == "DequantizeLinear":
            q = made.get(made[name].input[0])
            name = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name
        if made.get(name) is not None and made[name].op_type in ("GlobalAveragePool",
                                                                  "ReduceMean"):
            continue
        names.append(name)
        if len(names) == count:
            break
    return names


def with_moments(graph: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The graph with each tensor's per-channel mean and mean square over the frame as extra
    outputs (two ReduceMean nodes and a Mul per tensor)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for k, name in enumerate(names):
        square = f"vote_sq_{k}"
        model.graph.node.append(helper.make_node("Mul", [name, name], [square]))
        for what, src in (("mean", name), ("meansq", square)):
            out = f"vote_{what}_{k}"
            if opset >= 18:
                axes = f"vote_axes_{k}_{what}"
                model.graph.initializer.append(onnx.numpy_helper.from_array(
                    np.array([2, 3], np.int64), axes))
                model.graph.node.append(helper.make_node("ReduceMean", [src, axes], [out]))
            else:
                model.graph.node.append(helper.make_node("ReduceMean", [src], [out], axes=[2, 3]))
            model.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT,
                                                                    None))
    return model


def graph_cost(bundle_path: str, frame: np.ndarray, rounds: int = 200) -> dict:
    """The bundle's classifier graph alone and with the activation moments as outputs, batch 1,
    one thread, interleaved (``bench.latency.measure``); medians in ms and the paired
    difference."""
    bundle = open_bundle(bundle_path)
    graph = onnx.load(str(bundle.classifier_file("onnxruntime")))
    names = tapped_tensors(graph, len(LAYERS))
    plain = make_session("classifier", model=graph.SerializeToString(), threads=1)
    tapped = make_session("classifier with moments",
                          model=with_moments(graph, names).SerializeToString(), threads=1)
    feed = {plain.get_inputs()[0].name: bundle.spec.preprocess(frame[None])}
    wanted = [o.name for o in tapped.get_outputs()]
    samples = measure([Config("graph", "classifier", None, lambda: plain.run(None, feed)),
                       Config("with moments", "chain", None, lambda: tapped.run(wanted, feed))],
                      iterations=rounds, warmup=10)
    a, b = np.asarray(samples["graph"]), np.asarray(samples["with moments"])
    diff = b - a
    return {"tensors": names, "graph_ms": round(float(np.median(a)), 3),
            "with_moments_ms": round(float(np.median(b)), 3),
            "paired_diff_ms": round(float(np.median(diff)), 3),
            "paired_diff_iqr_ms": [round(float(np.percentile(diff, q)), 3) for q in (25, 75)]}


def thumbnail_cost(frame: np.ndarray, calls: int = 300) -> float:
    samples = measure([Config("thumbnail", "calibrator", None,
                              lambda: frame_features(frame[None]))], iterations=calls, warmup=10)
    return round(float(np.median(samples["thumbnail"])), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--camvid", required=True, help="the CamVid segmenter checkpoint")
    ap.add_argument("--camvid-bundle", required=True, help="a bundle of that segmenter")
    ap.add_argument("--digits", required=True, help="the MNIST classifier checkpoint")
    ap.add_argument("--digits-bundle", required=True, help="a bundle of that classifier")
    args = ap.parse_args()
    root = args.data_root
    torch.set_num_threads(1)
    report: dict = {"command": "python " + " ".join(sys.argv), "commit": git_commit(),
                    "machine": capture(), "layers": list(LAYERS)}
    swap = lambda frames: frames[..., ::-1].copy()  # noqa: E731

    seg = load_classifier(args.camvid)
    load = lambda name, split: seg.spec.resize_uint8(load_dataset(name, split, root).images)  # noqa: E731
    day, dusk = load("camvid:day", "train"), load("camvid:dusk", "train")
    tests = {"day test": load("camvid:day", "test"), "dusk test": load("camvid:dusk", "test")}
    tests["dusk train"] = dusk
    tests["day test, red and blue swapped"] = swap(tests["day test"])
    report["camvid"] = {
        "model": f"{args.camvid} ({seg.spec.height}x{seg.spec.width})",
        "day_dusk": compare(seg, {"day": day, "dusk": dusk}, tests),
        "day_only": compare(seg, {"day": day}, tests),
        "cost": {"thumbnail_ms": thumbnail_cost(tests["day test"][0]),
                 "graph": graph_cost(args.camvid_bundle, tests["day test"][0])}}

    clf = load_classifier(args.digits)
    dl = lambda name, split, n: clf.spec.resize_uint8(  # noqa: E731
        load_dataset(name, split, root).images[:n])
    known = {"mnist": dl("mnist", "train", 2000), "colour": dl("mnist:colour", "train", 2000)}
    digit_tests = {name: dl(name, "test", 1000) for name in
                   ("mnist", "mnist:colour", "mnist:haze", "mnist:lowlight", "mnist:blur",
                    "mnist:texture", "usps")}
    digit_tests["mnist:colour, red and blue swapped"] = swap(digit_tests["mnist:colour"])
    report["digits"] = {
        "model": f"{args.digits} ({clf.spec.height}x{clf.spec.width})",
        "mnist_colour": compare(clf, known, digit_tests),
        "cost": {"thumbnail_ms": thumbnail_cost(digit_tests["mnist"][0]),
                 "graph": graph_cost(args.digits_bundle, digit_tests["mnist"][0])}}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / "report.json", report)
    write_bytes_atomic(OUT / "report.md", markdown(report).encode())
    print(markdown(report))


def table(rows: dict, known: set[str]) -> list[str]:
    lines = ["| frames | known? | thumbnail: unknown % | activations: unknown % |",
             "|---|---|---|---|"]
    for name in rows["thumbnail"]:
        lines.append(f"| {name} | {'known' if name in known else 'new'} | "
                     f"{rows['thumbnail'][name]} | {rows['activations'][name]} |")
    return lines


def cost(c: dict) -> str:
    g = c["graph"]
    return (f"Cost per frame (batch 1, 1 thread, medians): thumbnail features {c['thumbnail_ms']} "
            f"ms; the deployed graph {g['graph_ms']} ms alone, {g['with_moments_ms']} ms with "
            f"the activation moments as outputs (paired difference {g['paired_diff_ms']} ms, "
            f"IQR {g['paired_diff_iqr_ms'][0]} to {g['paired_diff_iqr_ms'][1]}; tensors "
            f"{', '.join(g['tensors'])}).")


def markdown(r: dict) -> str:
    c, d = r["camvid"], r["digits"]
    lines = ["# The vote's features: thumbnail statistics against the model's activations", "",
             f"`{r['command']}` at {r['commit'][0][:7]}"
             f"{' (uncommitted changes)' if r['commit'][1] else ''}; {r['machine']['cpu']}, "
             f"{r['machine']['cores']} cores.", "",
             f"Activation features: per-channel mean and std of the inputs of tapped layers "
             f"{r['layers']} (0 is the image). Same open-set rule for both (references, blocked "
             "5-fold radii, k-th neighbour).", "",
             f"## CamVid, {c['model']}: bundle domains day + dusk", "",
             *table(c["day_dusk"], {"day test", "dusk test", "dusk train",
                                    "day test, red and blue swapped"}), "",
             "## CamVid: a bundle that knows only day", "",
             *table(c["day_only"], {"day test", "day test, red and blue swapped"}), "",
             cost(c["cost"]), "",
             f"## Digits, {d['model']}: bundle domains mnist + colour", "",
             *table(d["mnist_colour"], {"mnist", "mnist:colour"}), "",
             cost(d["cost"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
