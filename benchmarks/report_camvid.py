"""The CamVid day -> dusk table from ``benchmarks/results/camvid/*.json``: mIoU, pixel accuracy
and per-class IoU on the 62 dusk test frames, retention on the 171 day test frames, calibrators
as mean ± standard deviation over seeds; written as ``camvid.md`` and into the README between
the camvid-results markers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from report_common import load_records, mean_sd, replace_readme_section

ROWS = (("float", "float segmenter (not deployed)"),
        ("adabn_float", "AdaBN on the float segmenter (dusk BN statistics; not deployed)"),
        ("source_only", "source only (2:4 + INT8, deployed)"),
        ("histogram", "histogram matching to the day frames"),
        ("gain_gamma", "global gain/gamma fitted on the dusk frames"))


FLAGS = (("--eps", "ε {}"), ("--lr", "lr {}"), ("--epochs", "{} epochs"),
         ("--w-consistency", "consistency {}"), ("--w-histogram", "histogram {}"))


def recipe(command: str) -> tuple[str, str]:
    """(family, its training settings) read from a calibrator's training command."""
    words = command.split()
    value = lambda flag: words[words.index(flag) + 1] if flag in words else None  # noqa: E731
    defaults = {"--eps": "0.5"}  # the CLI's default, which early runs did not spell out
    settings = [text.format((value(flag) or defaults[flag]).removesuffix(".0"))
                for flag, text in FLAGS if value(flag) is not None or flag in defaults]
    return value("--calibrator-arch"), ", ".join(settings)


DISTANCE_KEYS = {"source_only": "raw", "histogram": "histogram"}  # rows -> distances.json


class Row(NamedTuple):
    """One method: its results per seed (one for a baseline) on each set of frames."""

    label: str
    recipe: str
    distances: list[float]  # W1 of the dusk training frames to the day pixels (unlabelled)
    dusk: list[dict]
    day: list[dict]
    dayval: list[dict]


def rows(records: dict) -> list[Row]:
    """One Row per method; calibrator runs that differ only by seed are gathered."""
    distances = records.get("distances", {}).get("result", {})
    dayval = lambda key: [records[f"{key}_dayval"]["result"]] \
        if f"{key}_dayval" in records else []  # noqa: E731
    out = [Row(label, "", [distances[DISTANCE_KEYS[key]]] if DISTANCE_KEYS.get(key) in distances
               else [], [records[f"{key}_dusk"]["result"]], [records[f"{key}_day"]["result"]],
               dayval(key))
           for key, label in ROWS if f"{key}_dusk" in records and f"{key}_day" in records]
    families: dict = {}
    for name in records:
        match = re.fullmatch(r"(\w+)_s(\d+)_dusk", name)
        if match and f"{match[1]}_s{match[2]}_day" in records:
            families.setdefault(match[1], []).append(match[2])
    for name, seeds in sorted(families.items()):
        seeds = sorted(seeds)
        family, settings = recipe(records[f"{name}_s{seeds[0]}_train"]["command"])
        out.append(Row(f"calibrator: {family} ({len(seeds)} seed{'s' * (len(seeds) > 1)})",
                       settings, [distances[f"{name}_s{s}"] for s in seeds
                               if f"{name}_s{s}" in distances],
                    [records[f"{name}_s{s}_dusk"]["result"] for s in seeds],
                    [records[f"{name}_s{s}_day"]["result"] for s in seeds],
                    [r for s in seeds for r in dayval(f"{name}_s{s}")]))
    return out


def markdown(records: dict, commands: bool = True) -> str:
    table = rows(records)
    if not table:
        return "(no CamVid results yet)"
    classes = list(table[0].dusk[0]["per_class_iou"])
    lines = ["| method | recipe | dusk train frames to day pixels (W1, unlabelled) | dusk mIoU | "
             "dusk pixel acc. | day test mIoU (retention) | day val mIoU (retention, training "
             "sequence) | " + " | ".join(classes) + " |", "|---" * (7 + len(classes)) + "|"]
    def cell(values):
        return mean_sd(values, count=False)

    for label, settings, distance, dusk, day, val in table:
        per_class = [cell([r["per_class_iou"][c] for r in dusk
                           if r["per_class_iou"][c] is not None]) for c in classes]
        w1 = mean_sd(distance, count=False, digits=3) if distance else ""
        lines.append(f"| {label} | {settings} | {w1} | {cell([r['miou'] for r in dusk])} | "
                     f"{cell([r['pixel_accuracy'] for r in dusk])} | "
                     f"{cell([r['miou'] for r in day])} | {cell([r['miou'] for r in val])} | "
                     + " | ".join(per_class) + " |")
    machines = sorted({(rec.get("machine") or {}).get("cpu") or "?" for rec in records.values()})
    lines += ["", "Per-class columns are IoU on the dusk test frames. Machines: "
              + ", ".join(machines) + ". Every record in `benchmarks/results/camvid/` has its "
              "command and commit" + (":" if commands else " (all commands: "
                                      "`benchmarks/results/camvid/camvid.md`).")]
    if commands:
        lines += ["", "```", *sorted({rec["command"] for rec in records.values()
                                      if "command" in rec}), "```"]
    return "\n".join(lines)


def write_report(results: Path, readme: Path | None = None) -> None:
    records = load_records(results)
    (results / "camvid.md").write_text("# CamVid day -> dusk (generated by "
                                       "`python benchmarks/camvid.py report`)\n\n"
                                       + markdown(records) + "\n")
    md = markdown(records, commands=False)
    replace_readme_section(readme, "camvid", md)
    print(md)
