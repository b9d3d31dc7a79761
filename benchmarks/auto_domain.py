"""How well ``--domain auto`` names known domains and flags new ones, and what its vote costs.

Builds the domain classifier exactly as ``export`` does (``export.domain_model.fit_domain_model``,
seed 0) from real training frames, then votes on real test frames, one frame at a time:

- CamVid at 480x360 (the full benchmark bundle's input): domains ``day`` (305 day training
  frames) and ``dusk`` (the 62 unlabelled dusk training frames). Test stream: the 62 dusk test
  frames, then the 171 day test frames, through the vote window (15 frames, 70%) as ``run``
  does. A bundle that knows only ``day``: how many dusk frames it calls ``unknown``.
- Digits at 32x32: domains ``mnist`` and ``colour`` (the demo bundle's), 2,000 training frames
  each; the other photometric shifts and USPS as new domains.
- Frame sets that look alike to grey-level statistics but not to the model: the same frames
  with red and blue swapped.
- The vote's cost per frame (median of 300 calls on one test frame, one process).

``--previous COMMIT`` also scores the previous release's features and radius rule
(``grey-stats-v1``: a per-domain ellipsoid radius from 20% held-out frames), read from git.
``--lookalike BUNDLE`` (a digits bundle with domains ``colour`` and ``mnist``, e.g. the demo's)
measures what the red-blue swap costs: 1,000 mnist:colour test digits, as they are and swapped,
through ``edge-calib eval --deploy`` with the colour calibrator and with the frozen model alone.

    python benchmarks/auto_domain.py --data-root ../shared/data --previous 986ab23 \
        --lookalike .edge-calib-demo/bundle-colour-thumbnail

writes ``benchmarks/results/auto_domain/report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from edge_calib.core.provenance import capture, git_commit  # noqa: E402
from edge_calib.core.spec import DIGITS_RGB32, InputSpec  # noqa: E402
from edge_calib.data import load_dataset  # noqa: E402
from edge_calib.export.domain_model import fit_domain_model, render_like_a_stream  # noqa: E402
from edge_calib.runtime.domain_auto import UNKNOWN, AutoDomain, DomainModel  # noqa: E402

CAMVID = InputSpec(360, 480, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
OUT = Path(__file__).resolve().parent / "results" / "auto_domain"


def as_model(domains: list[str], fitted: dict) -> DomainModel:
    o = fitted["open_set"]
    return DomainModel(domains, np.asarray(fitted["mean"]), np.asarray(fitted["std"]),
                       np.asarray(fitted["weights"]), np.asarray(fitted["bias"]),
                       [np.asarray(r) for r in o["references"]], np.asarray(o["radii"]), o["k"])


def votes(model: DomainModel, frames: np.ndarray) -> list[str]:
    auto = AutoDomain(model)
    return [auto.predict(frames[i:i + 1])["predicted"] for i in range(len(frames))]


def stream(model: DomainModel, segments: list[tuple[str, np.ndarray]]) -> dict:
    """The window's decisions over the segments played in order, as ``run`` makes them."""
    auto = AutoDomain(model)
    current, switches, ran = None, [], {}
    start = 0
    for truth, frames in segments:
        for i in range(len(frames)):
            target = auto.update(current, auto.predict(frames[i:i + 1])["predicted"])
            if target is not None:
                if current is not None:
                    switches.append({"frame": start + i, "from": current, "to": target})
                current = target
            ran.setdefault(truth, {}).setdefault(current, 0)
            ran[truth][current] += 1
        start += len(frames)
    return {"switches": switches, "ran_as": ran}


def counts(names: list[str]) -> dict:
    return {n: names.count(n) for n in sorted(set(names))}


def vote_cost(model: DomainModel, frame: np.ndarray, calls: int = 300) -> float:
    auto = AutoDomain(model)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        auto.predict(frame)
        times.append((time.perf_counter() - t) * 1e3)
    return round(float(np.median(times)), 3)


def previous_release(commit: str):
    """The previous release's features and radius rule, as a namespace, read from git."""
    source = subprocess.run(["git", "show", f"{commit}:edge_calib/imaging/domain_features.py"],
                            capture_output=True, text=True, check=True).stdout
    space: dict = {}
    exec(compile(source, f"{commit}:domain_features.py", "exec"), space)
    return space


def previous_scores(v1, spec, train: list[np.ndarray], tests: dict, rng) -> dict:
    """grey-stats-v1 as the previous export built it: 80% of each domain (and its stream
    renderings) fit, 20% held out set the radius; a frame is unknown outside every radius."""
    lo, hi = spec.lo[0], spec.hi[0]
    fit, hold = [], []
    for k, frames in enumerate(train):
        frames = frames[rng.permutation(len(frames))]
        cut = int(0.8 * len(frames))
        for part, out in ((frames[:cut], fit), (frames[cut:], hold)):
            both = np.concatenate([part, render_like_a_stream(part, rng)])
            out.append(v1["image_features"](spec.normalize(both), lo, hi))
    model = v1["fit_logistic"](np.concatenate(fit),
                               np.concatenate([np.full(len(f), k) for k, f in enumerate(fit)]),
                               len(train))
    model["open_set"] = v1["fit_open_set"](model, fit, hold)
    out = {}
    for name, frames in tests.items():
        f = v1["image_features"](spec.normalize(frames), lo, hi)
        out[name] = round(float((v1["open_set_ratios"](model, f).min(axis=1) > 1).mean() * 100), 1)
    frame = tests[next(iter(tests))][:1]
    times = []
    for _ in range(100):
        t = time.perf_counter()
        f = v1["image_features"](spec.normalize(frame), lo, hi)
        v1["predict_logistic"](model, f)
        v1["open_set_ratios"](model, f)
        times.append((time.perf_counter() - t) * 1e3)
    return {"unknown_pct": out, "vote_ms": round(float(np.median(times)), 3)}


def lookalike_accuracy(bundle: str, root: str) -> dict:
    """Accuracy (%) of the bundle's colour and mnist (frozen model alone) domains on 1,000
    mnist:colour test digits as they are and with red and blue swapped (ImageFolders)."""
    import tempfile

    import cv2

    data = load_dataset("mnist:colour", "test", root)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, images in (("as they are", data.images[:1000]),
                             ("red and blue swapped", data.images[:1000][..., ::-1])):
            folder = Path(tmp) / name.replace(" ", "_")
            for i, (image, label) in enumerate(zip(images, data.labels[:1000])):
                (folder / str(label)).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / str(label) / f"{i:04d}.png"),
                            np.ascontiguousarray(image[..., ::-1]))  # RGB -> OpenCV's BGR
            for domain in ("colour", "mnist"):
                proc = subprocess.run([sys.executable, "-m", "edge_calib.cli", "eval", "--deploy",
                                       bundle, "--domain", domain, "--dataset", str(folder),
                                       "--json"], capture_output=True, text=True, check=True)
                out[f"{name}, {domain}"] = json.loads(proc.stdout.strip().splitlines()[-1])[
                    "accuracy"]
    return out


def unknown_pct(model, frames) -> float:
    return round(votes(model, frames).count(UNKNOWN) / len(frames) * 100, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--previous", help="a commit whose grey-stats-v1 rule is scored beside")
    ap.add_argument("--lookalike", help="a digits bundle (domains colour, mnist): accuracy on "
                                        "red-blue swapped colour digits")
    args = ap.parse_args()
    root = args.data_root
    report: dict = {"command": "python " + " ".join(sys.argv), "commit": git_commit(),
                    "machine": capture()}

    # CamVid
    load = lambda name, split: CAMVID.resize_uint8(load_dataset(name, split, root).images)  # noqa: E731
    day, dusk = load("camvid:day", "train"), load("camvid:dusk", "train")
    day_test, dusk_test = load("camvid:day", "test"), load("camvid:dusk", "test")
    swap = lambda frames: frames[..., ::-1].copy()  # noqa: E731
    fitted, built = fit_domain_model([day, dusk], np.random.default_rng(0))
    two = as_model(["day", "dusk"], fitted)
    day_only = as_model(["day"], fit_domain_model([day], np.random.default_rng(0))[0])
    camvid_tests = {"day test": day_test, "dusk test": dusk_test, "dusk train": dusk,
                    "day test, red and blue swapped": swap(day_test)}
    report["camvid"] = {
        "build": built, "radii": {"day": float(two.radii[0]), "dusk": float(two.radii[1])},
        "votes_day_dusk": {name: counts(votes(two, f)) for name, f in camvid_tests.items()},
        "stream_day_dusk": stream(two, [("dusk", dusk_test), ("day", day_test)]),
        "unknown_pct_day_only": {name: unknown_pct(day_only, f)
                                 for name, f in camvid_tests.items()},
        "vote_ms_480x360": vote_cost(two, day_test[:1]),
    }
    # Digits
    dl = lambda name, split, n: DIGITS_RGB32.resize_uint8(  # noqa: E731
        load_dataset(name, split, root).images[:n])
    mnist, colour = dl("mnist", "train", 2000), dl("mnist:colour", "train", 2000)
    digits = as_model(["mnist", "colour"],
                      fit_domain_model([mnist, colour], np.random.default_rng(0))[0])
    digit_tests = {name: dl(name, "test", 1000) for name in
                   ("mnist", "mnist:colour", "mnist:haze", "mnist:lowlight", "mnist:blur",
                    "mnist:texture", "usps")}
    digit_tests["mnist:colour, red and blue swapped"] = swap(digit_tests["mnist:colour"])
    report["digits"] = {"unknown_pct": {name: unknown_pct(digits, f)
                                        for name, f in digit_tests.items()},
                        "vote_ms_32x32": vote_cost(digits, digit_tests["mnist"][:1])}
    if args.lookalike:
        report["digits"]["lookalike_accuracy"] = {"bundle": args.lookalike, **lookalike_accuracy(
            args.lookalike, root)}
    if args.previous:
        v1 = previous_release(args.previous)
        report["previous"] = {
            "commit": args.previous,
            "camvid_day_dusk": previous_scores(v1, CAMVID, [day, dusk], camvid_tests,
                                               np.random.default_rng(0)),
            "camvid_day_only": previous_scores(v1, CAMVID, [day], camvid_tests,
                                               np.random.default_rng(0)),
            "digits": previous_scores(v1, DIGITS_RGB32, [mnist, colour], digit_tests,
                                      np.random.default_rng(0))}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / "report.json", report)
    write_bytes_atomic(OUT / "report.md", markdown(report).encode())
    print(markdown(report))


def markdown(r: dict) -> str:
    c, d, p = r["camvid"], r["digits"], r.get("previous")
    lines = ["# `--domain auto`: naming known domains, flagging new ones", "",
             f"`{r['command']}`", "",
             "## CamVid at 480x360 (bundle domains day, dusk)", "",
             f"Vote: {c['vote_ms_480x360']} ms median per frame"
             + (f" (previous release: {p['camvid_day_dusk']['vote_ms']} ms)" if p else "") + ".",
             f"Out-of-fold frames inside a radius at build: {c['build']['holdout_known']}%.", "",
             "| frames | votes (day, dusk bundle) | unknown, day-only bundle |"
             + (" previous: unknown (day, dusk) | previous: unknown (day only) |" if p else ""),
             "|---|---|---|" + ("---|---|" if p else "")]
    for name, v in c["votes_day_dusk"].items():
        row = f"| {name} | {v} | {c['unknown_pct_day_only'][name]}% |"
        if p:
            row += (f" {p['camvid_day_dusk']['unknown_pct'][name]}% |"
                    f" {p['camvid_day_only']['unknown_pct'][name]}% |")
        lines.append(row)
    s = c["stream_day_dusk"]
    lines += ["", f"Test stream (dusk then day) through the 15-frame window: switches "
                  f"{s['switches']}; frames run as {s['ran_as']}.", "",
              "## Digits at 32x32 (bundle domains mnist, colour)", "",
              f"Vote: {d['vote_ms_32x32']} ms median per frame"
              + (f" (previous release: {p['digits']['vote_ms']} ms)" if p else "") + ".", "",
              "| test frames | unknown |" + (" previous release |" if p else ""),
              "|---|---|" + ("---|" if p else "")]
    for name, v in d["unknown_pct"].items():
        lines.append(f"| {name} | {v}% |" + (f" {p['digits']['unknown_pct'][name]}% |" if p else ""))
    if "lookalike_accuracy" in d:
        a = d["lookalike_accuracy"]
        lines += ["", f"What the swap costs ({a['bundle']}, 1,000 mnist:colour test digits, "
                      "accuracy through `eval --deploy`):", "",
                  "| frames | colour calibrator | frozen model alone |", "|---|---|---|"]
        for name in ("as they are", "red and blue swapped"):
            lines.append(f"| {name} | {a[f'{name}, colour']}% | {a[f'{name}, mnist']}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
