"""The CamVid day -> dusk tables from ``benchmarks/results/camvid/*.json`` and, for the segmenter
trained with photometric augmentation, ``benchmarks/results/camvid_augment/*.json``: mIoU, pixel
accuracy and per-class IoU on the 62 dusk test frames, retention on the 171 day test and 101
day validation frames, the unlabelled criteria on the dusk training frames, calibrators as
mean ± standard deviation over seeds, how well the unlabelled statistics distance ranks the
calibrator variants against their dusk mIoU (Spearman), and the two segmenters side by side;
written as ``camvid.md`` in each folder and into RESULTS.md between the camvid-results
markers."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import NamedTuple

from report_common import load_records, mean_sd, replace_readme_section

BASELINES = (("float", "float segmenter (not deployed)"),
             ("adabn_float", "AdaBN on the float segmenter (dusk BN statistics; not deployed)"),
             ("source_only", "source only (2:4 + INT8, deployed)"),
             ("histogram", "histogram matching to the day frames (per frame, no parameters)"),
             ("histogram_deployed", "histogram matching as a bundle entry (`dusk=histogram`, "
                                    "to the recorded source pixels, ONNX Runtime)"),
             ("gain_gamma", "global gain/gamma fitted on the dusk frames"))
PLAIN = "LR-ASPP MobileNetV3-Small at 480x360, 2:4 + INT8 (no photometric augmentation)"
AUGMENTED = ("the same trained with `--augment photometric` (exposure, gamma, contrast, colour "
             "gains, blur)")
# the README's recipe: the rows compared across the two segmenters
RECIPE = "curve_stats3_large_ema95_cons10_hist10_e80_r3"
FLAGS = (("--objective", "{} objective"), ("--init", "starts at {}"),
         ("--calibrator-size", "{}"), ("--eps", "ε {}"),
         ("--lr", "lr {}"), ("--epochs", "{} epochs"), ("--ema", "EMA {}"),
         ("--w-stats", "stats {}"), ("--w-consistency", "consistency {}"),
         ("--w-histogram", "histogram {}"), ("--restarts", "best of {} starts by the "
                                                             "statistics distance"),
         ("--restart-epochs", "{} epochs each"))
DISTANCE_KEYS = {"source_only": "raw", "histogram": "histogram"}  # rows -> distances.json


def recipe(command: str) -> tuple[str, str]:
    """(family, its training settings) read from a calibrator's training command."""
    words = command.split()
    value = lambda flag: words[words.index(flag) + 1] if flag in words else None  # noqa: E731
    settings = [text.format(value(flag).removesuffix(".0"))
                for flag, text in FLAGS if value(flag) is not None]
    return value("--calibrator-arch"), ", ".join(settings)


class Row(NamedTuple):
    """One method: its results per seed (one for a baseline) on each set of frames."""

    label: str
    recipe: str
    criteria: list[dict]  # unlabelled, on the dusk training frames (distances.json)
    dusk: list[dict]
    day: list[dict]
    dayval: list[dict]


def rows(records: dict) -> list[Row]:
    """One Row per method; calibrator runs that differ only by seed are gathered."""
    criteria = records.get("distances", {}).get("result", {})
    result = lambda key: [records[key]["result"]] if key in records else []  # noqa: E731
    out = []
    for key, label in BASELINES:
        if f"{key}_dusk" in records:
            crit = criteria.get(DISTANCE_KEYS.get(key, "?"))
            out.append(Row(label, "", [crit] if crit else [], result(f"{key}_dusk"),
                           result(f"{key}_day"), result(f"{key}_dayval")))
    runs: dict = {}
    for name in records:
        match = re.fullmatch(r"(\w+)_s(\d+)_dusk", name)
        if match:
            runs.setdefault(match[1], []).append(match[2])
    for name, seeds in sorted(runs.items()):
        seeds = sorted(seeds)
        family, settings = recipe(records[f"{name}_s{seeds[0]}_train"]["command"])
        out.append(Row(f"calibrator: {family} ({len(seeds)} seed{'s' * (len(seeds) > 1)})",
                       settings, [criteria[f"{name}_s{s}"] for s in seeds
                                  if f"{name}_s{s}" in criteria],
                       [r for s in seeds for r in result(f"{name}_s{s}_dusk")],
                       [r for s in seeds for r in result(f"{name}_s{s}_day")],
                       [r for s in seeds for r in result(f"{name}_s{s}_dayval")]))
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation (average ranks for ties)."""
    if len(x) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    return statistics.correlation(rx, ry)


def criterion_ranking(records: dict) -> str:
    """How the unlabelled statistics distance ranks every calibrator run (each seed a point)
    against its dusk test mIoU."""
    criteria = records.get("distances", {}).get("result", {})
    points = [(criteria[name[:-5]]["stats_distance"], records[name]["result"]["miou"])
              for name in records if name.endswith("_dusk") and name[:-5] in criteria
              and re.search(r"_s\d+$", name[:-5])]
    rho = spearman([p[0] for p in points], [p[1] for p in points])
    if rho is None:
        return ""
    return (f"Unlabelled selection: over the {len(points)} calibrator runs above (each seed a "
            f"point), the statistics distance on the dusk *training* frames ranks them against "
            f"their dusk *test* mIoU with Spearman {rho:+.2f} (lower distance, higher mIoU: a "
            "negative value is agreement).")


def table(records: dict) -> list[str]:
    body = rows(records)
    if not body:
        return []
    classes = list(body[0].dusk[0]["per_class_iou"])
    lines = ["| method | recipe | statistics distance (unlabelled) | pixel W1 (unlabelled) | "
             "dusk mIoU | dusk pixel acc. | day test mIoU (retention) | day val mIoU "
             "(retention, training sequence) | " + " | ".join(classes) + " |",
             "|---" * (8 + len(classes)) + "|"]

    def cell(values, digits=1):
        return mean_sd(values, count=False, digits=digits)

    for label, settings, crit, dusk, day, val in body:
        per_class = [cell([r["per_class_iou"][c] for r in dusk
                           if r["per_class_iou"][c] is not None]) for c in classes]
        lines.append(f"| {label} | {settings} | "
                     f"{cell([c['stats_distance'] for c in crit], 3) if crit else ''} | "
                     f"{cell([c['pixel_w1'] for c in crit], 3) if crit else ''} | "
                     f"{cell([r['miou'] for r in dusk])} | "
                     f"{cell([r['pixel_accuracy'] for r in dusk])} | "
                     f"{cell([r['miou'] for r in day])} | {cell([r['miou'] for r in val])} | "
                     + " | ".join(per_class) + " |")
    ranking = criterion_ranking(records)
    return lines + (["", ranking] if ranking else [])


def side_by_side(plain: dict, augmented: dict) -> list[str]:
    """Source only, histogram matching, AdaBN and the README's recipe on both segmenters (dusk,
    day test, day val mIoU), then what augmentation alone buys and what the calibrator adds on
    top of it."""
    methods = (("source_only", "source only"), ("histogram", "histogram matching"),
               ("adabn_float", "AdaBN (float segmenter)"), (RECIPE, "curve recipe (seeds)"))

    def scores(records, key, split):
        if key == RECIPE:
            return [r["result"]["miou"] for n, r in sorted(records.items())
                    if re.fullmatch(rf"{RECIPE}_s\d+_{split}", n)]
        return [records[f"{key}_{split}"]["result"]["miou"]] if f"{key}_{split}" in records else []

    lines = ["| method | " + " | ".join(f"{seg}: {split}" for seg in ("plain", "augmented")
                                       for split in ("dusk", "day test", "day val")) + " |",
             "|---" * 7 + "|"]
    means = {}
    for key, label in methods:
        cells = []
        for name, records in (("plain", plain), ("augmented", augmented)):
            for split in ("dusk", "day", "dayval"):
                values = scores(records, key, split)
                cells.append(mean_sd(values))
                means[(name, key, split)] = statistics.mean(values) if values else None
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    m = lambda *k: means.get(k)  # noqa: E731
    lines.append("")
    if m("plain", "source_only", "dusk") is not None and m("augmented", "source_only", "dusk") is not None:
        text = (f"Photometric augmentation alone moves the deployed segmenter's dusk mIoU from "
                f"{m('plain', 'source_only', 'dusk'):.1f} to {m('augmented', 'source_only', 'dusk'):.1f}")
        cal, hm = m("augmented", RECIPE, "dusk"), m("augmented", "histogram", "dusk")
        if cal is not None and hm is not None:
            text += (f"; on the augmented segmenter the curve recipe reaches {cal:.1f} against "
                     f"{hm:.1f} for histogram matching ({cal - hm:+.1f}"
                     + (", below histogram matching + 1" if cal - hm < 1 else "") + ")")
        else:
            text += "; the calibrator rows on the augmented segmenter are not measured yet"
        lines.append(text + ".")
    return lines


def markdown(records: dict, commands: bool = True, title: str = PLAIN,
             augmented: dict | None = None) -> str:
    lines = []
    for records_, title_ in ((records, title), (augmented or {}, AUGMENTED)):
        part = table(records_)
        if part:
            lines += [f"**{title_}**", "", *part, ""]
    if augmented and rows(augmented):
        lines += ["**The two segmenters side by side** (mIoU; calibrator rows: mean ± sd over "
                  "seeds)", "", *side_by_side(records, augmented), ""]
    if not lines:
        return "(no CamVid results yet)"
    every = {**records, **{f"augment/{k}": v for k, v in (augmented or {}).items()}}
    machines = sorted({(rec.get("machine") or {}).get("cpu") for rec in every.values()} - {None})
    lines += ["Per-class columns are IoU on the dusk test frames. The unlabelled columns are "
              "measured on the 62 dusk *training* frames (`python benchmarks/camvid.py "
              "distances`). Machines: " + ", ".join(machines) + ". Every record in "
              "`benchmarks/results/camvid/` (and `camvid_augment/`) has its command and commit"
              + (":" if commands else " (all commands: `benchmarks/results/camvid/camvid.md`).")]
    if commands:
        lines += ["", "```", *sorted({rec["command"] for rec in records.values()
                                      if "command" in rec}), "```"]
    return "\n".join(lines)


def write_report(results: Path, readme: Path | None = None,
                 augmented_results: Path | None = None) -> None:
    records = load_records(results)
    augmented = load_records(augmented_results) if augmented_results and augmented_results.exists() else {}
    (results / "camvid.md").write_text("# CamVid day -> dusk (generated by "
                                       "`python benchmarks/camvid.py report`)\n\n"
                                       + markdown(records) + "\n")
    if augmented:
        (augmented_results / "camvid.md").write_text(
            "# CamVid day -> dusk, segmenter trained with photometric augmentation (generated "
            "by `python benchmarks/camvid.py report`)\n\n"
            + markdown(augmented, title=AUGMENTED) + "\n")
    md = markdown(records, commands=False, augmented=augmented)
    replace_readme_section(readme, "camvid", md)
    print(md)
