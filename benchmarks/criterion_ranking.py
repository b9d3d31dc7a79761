#!/usr/bin/env python3
"""How well the unlabelled criteria rank calibrator variants against their dusk mIoU: for every
``NAME.calib.pt`` in a folder that has its evaluations beside it (``NAME.dusktest.json``,
``NAME.daytest.json``, ``NAME.dayval.json``, as ``edge-calib eval --json`` writes them), the
statistics distance, the pixel W1 and the prediction entropy on the dusk *training* frames
(labels never read), and the Spearman rank correlation of each criterion with dusk test mIoU.

    python benchmarks/criterion_ranking.py --classifier C.pt --calibrators DIR --out DIR

Writes ``ranking.json`` and ``ranking.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("arch", "size", "objective", "lr", "eps", "epochs", "ema", "w_stats",
            "w_consistency", "w_histogram", "w_entropy", "w_marginal", "w_source", "stats_layers")
CRITERIA = ("stats_distance", "pixel_w1", "entropy")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--calibrators", required=True, help="Folder of NAME.calib.pt + evals.")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic
    from edge_calib.models.store import load_calibrator, load_classifier
    from edge_calib.core.provenance import capture
    from edge_calib.train.evaluate import unlabelled_scores
    from edge_calib.train.tensors import load_domain
    from report_camvid import spearman

    torch.set_num_threads(1)
    clf = load_classifier(args.classifier)
    stats = clf.source_stats
    dusk = load_domain("camvid:dusk", "train", args.data_root, clf.spec, unlabelled=True)
    rows = []
    with torch.no_grad():
        for path in sorted(Path(args.calibrators).glob("*.calib.pt")):
            name = path.name.removesuffix(".calib.pt")
            evals = {k: path.with_name(f"{name}.{k}.json") for k in ("dusktest", "daytest",
                                                                      "dayval")}
            if not all(p.is_file() for p in evals.values()):
                continue
            cal = load_calibrator(path)
            config = cal.meta.config
            scores = unlabelled_scores(clf.module, dusk, stats, cal.module.eval())
            rows.append({"name": name, "settings": {k: config.get(k) for k in SETTINGS},
                         **{k: round(v, 5) for k, v in scores.items()},
                         **{f"{k}_miou": json.loads(p.read_text())["miou"]
                            for k, p in evals.items()}})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "settings"}), flush=True)
    dusk_miou = [r["dusktest_miou"] for r in rows]
    ranking = {c: spearman([-r[c] for r in rows], dusk_miou) for c in CRITERIA}
    command = shlex.join(["python", "benchmarks/criterion_ranking.py", *sys.argv[1:]])
    out = Path(args.out)
    write_json_atomic(out / "ranking.json", {
        "command": command, "classifier": args.classifier,
        "classifier_fingerprint": clf.fingerprint, "criteria_on": "camvid:dusk train (unlabelled)",
        "spearman_with_dusk_test_miou": ranking,
        "note": "spearman of the negated criterion (lower is closer to the source) with dusk "
                "test mIoU: +1 ranks the variants exactly as their dusk mIoU",
        "provenance": capture(threads=1), "rows": rows})
    lines = ["| variant | settings | stats distance | pixel W1 | entropy | dusk test mIoU | "
             "day test mIoU | day val mIoU |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["stats_distance"]):
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items() if v is not None)
        lines.append(f"| {r['name']} | {settings} | {r['stats_distance']:.4f} | "
                     f"{r['pixel_w1']:.4f} | {r['entropy']:.3f} | {r['dusktest_miou']:.2f} | "
                     f"{r['daytest_miou']:.2f} | {r['dayval_miou']:.2f} |")
    lines += ["", "Spearman of each criterion (lower is better) with dusk test mIoU over "
              f"{len(rows)} variants: " + ", ".join(f"{k} {v:+.2f}" for k, v in ranking.items()
                                                    if v is not None),
              "", f"`{command}`; machine and commit in `ranking.json`."]
    write_bytes_atomic(out / "ranking.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
