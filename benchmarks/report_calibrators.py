"""Aggregate ``benchmarks/results/calibrators`` into calibrators.json, calibrators.md, the
accuracy-against-overhead plot and the RESULTS.md section.

The default calibrator is chosen by a rule fixed before the results were in, on the
*development* shifts only (colour, lowlight, haze; target test accuracy, one seed): the
cheapest family/size (largest latency overhead over the three fronts measured) whose mean
accuracy there is within 0.5 point of the best family's. The *confirmation* shifts (blur,
texture), the shape shifts (MNIST <-> USPS) and CamVid dusk are reported beside it, never used
to choose it.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from report_common import load_records, mean_sd, replace_readme_section

DEV = ("mnist-colour", "mnist-lowlight", "mnist-haze")
CONFIRM = ("mnist-blur", "mnist-texture")
SHAPE = ("mnist-usps", "usps-mnist")
PHOTOMETRIC = (*DEV, *CONFIRM)
# rows without a calibrator, on the same frozen classifier (calibrators.py accuracy / baselines)
BASELINES = {"source_only": "source only", "histogram": "histogram matching (per frame)",
             "adabn": "AdaBN (changes the model)"}
REFERENCE = "resnet/large"


def _mean(values):
    return statistics.mean(values) if values else None


def collect_accuracy(results: Path) -> dict:
    """{recipe: {task: {baseline: {"target", "source"}, "runs": {family/size: {seed: ...}}}}},
    baseline one of ``BASELINES`` where its records exist."""
    out: dict = {}
    for task_dir in sorted((results / "accuracy").glob("*/*")):
        recipe, task = task_dir.parent.name, task_dir.name
        records = load_records(task_dir)
        entry = out.setdefault(recipe, {}).setdefault(task, {"runs": {}})
        for key in BASELINES:
            if f"{key}_target" in records and f"{key}_source" in records:
                entry[key] = {"target": records[f"{key}_target"]["result"]["accuracy"],
                              "source": records[f"{key}_source"]["result"]["accuracy"]}
        for name, rec in records.items():
            match = re.fullmatch(r"([a-z0-9]+)_(small|medium|large)(\w*)_s(\d+)_target", name)
            if not match or f"{name[:-7]}_source" not in records:
                continue
            family, size, tag, seed = match.groups()  # tag: a recipe's suffix (e.g. _stats)
            train = records.get(f"{name[:-7]}_train", {})
            entry["runs"].setdefault(f"{family}/{size}{tag}", {})[int(seed)] = {
                "target": rec["result"]["accuracy"],
                "source": records[f"{name[:-7]}_source"]["result"]["accuracy"],
                "params": rec["result"].get("calibrator_params"),
                "command": train.get("command"), "commit": train.get("commit"),
                "machine": (train.get("machine") or {}).get("cpu")}
    return out


def collect_int8(results: Path) -> dict:
    """{task: {"source_only": acc, family: {"float": (target, source), "int8": (...),
    "deployed": target}}} from ``calibrators.py int8`` (seed 0, INT8 2:4 DTN)."""
    out: dict = {}
    for task_dir in sorted((results / "int8").glob("*")):
        if not task_dir.is_dir():
            continue
        acc = {name: rec["result"]["accuracy"] for name, rec in load_records(task_dir).items()
               if "accuracy" in rec["result"]}
        entry = out.setdefault(task_dir.name, {"source_only": (acc.get("source_only_target"),
                                                                acc.get("source_only_source"))})
        for name in acc:
            match = re.fullmatch(r"(\w+)_medium_s0_int8_deployed_target", name)
            if match:
                f = f"{match.group(1)}_medium_s0"
                entry[match.group(1)] = {
                    "float": (acc.get(f"{f}_target"), acc.get(f"{f}_source")),
                    "int8": (acc.get(f"{f}_int8_target"), acc.get(f"{f}_int8_source")),
                    "deployed": acc[name]}
    return out


def int8_markdown(int8: dict) -> list[str]:
    if not int8:
        return []
    families = sorted({k for t in int8.values() for k in t if k != "source_only"})
    lines = ["### INT8 calibrators in front of the INT8 2:4 DTN (medium sizes, seed 0)", "",
             "Each calibrator trained against the INT8 DTN (same budget as above), then quantised "
             "post-training (`edge-calib compress CAL --int8`, scales from 512 of its target "
             "training images). Target test accuracy, source (MNIST) test in brackets: float "
             "calibrator / INT8 calibrator in torch (fake quantisation) / INT8 calibrator as "
             "deployed (the bundle's fused INT8 graph, ONNX Runtime).", "",
             "| task | source only | " + " | ".join(families) + " |",
             "|---|---|" + "---|" * len(families)]

    def pair(v):
        return "-" if v[0] is None else f"{v[0]:.1f} ({v[1]:.1f})"

    for task, entry in int8.items():
        cells = []
        for fam in families:
            r = entry.get(fam)
            cells.append("-" if r is None else f"{pair(r['float'])} / {pair(r['int8'])} / "
                                               f"{r['deployed']:.1f}")
        lines.append(f"| {task} | {pair(entry['source_only'])} | " + " | ".join(cells) + " |")
    return lines + [""]


def overheads(costs: dict) -> dict:
    """{family/size: {front: overhead %}} and the worst front per family/size."""
    table: dict = {}
    for front, data in costs.get("backbones", {}).items():
        for key, row in data["rows"].items():
            if key != "classifier":
                table.setdefault(key, {})[front] = row
    return table


def choose_default(accuracy: dict, costs: dict) -> dict | None:
    plain = accuracy.get("plain", {})
    cost = {k: max(r["overhead_pct"] for r in v.values()) for k, v in overheads(costs).items()}
    candidates = {}  # only what was measured on the device fronts can be judged by its cost
    for key in {k for task in DEV for k in plain.get(task, {}).get("runs", {})} & set(cost):
        per_task = [plain[t]["runs"][key][0]["target"] for t in DEV
                    if key in plain.get(t, {}).get("runs", {}) and 0 in plain[t]["runs"][key]]
        if len(per_task) == len(DEV):
            candidates[key] = statistics.mean(per_task)
    if not candidates:
        return None
    best = max(candidates.values())
    within = [k for k, acc in candidates.items() if acc >= best - 0.5]
    chosen = min(within, key=lambda k: cost[k])
    return {"choice": chosen, "dev_mean": candidates[chosen], "best_dev_mean": best,
            "best": max(candidates, key=candidates.get), "worst_front_overhead_pct": cost[chosen],
            "rule": "cheapest (largest overhead over the measured fronts) within 0.5 point of the "
                    f"best mean target accuracy on {', '.join(DEV)}"}


def photometric_mean(tasks: dict, key: str) -> str:
    """The mean over the five photometric shifts of each shift's mean over its seeds, with the
    fewest seeds any shift had ("-" unless all five ran)."""
    runs = [tasks.get(t, {}).get("runs", {}).get(key, {}) for t in PHOTOMETRIC]
    if not all(runs):
        return "-"
    means = [_mean([r["target"] for r in seeds.values()]) for seeds in runs]
    return f"{_mean(means):.1f} (n={min(len(seeds) for seeds in runs)})"


def augmentation_markdown(accuracy: dict, default: dict | None, plain: str = "plain",
                          augmented: str = "photometric") -> list[str]:
    """The five photometric shifts on the plain source DTN and on its twin trained with
    ``--augment photometric``, side by side: source only, histogram matching, AdaBN and the
    default calibrator (mean over its seeds), each with MNIST test accuracy (retention); then
    what augmentation alone buys and what the calibrator adds on top of it."""
    if augmented not in accuracy or default is None:
        return []
    key, models = default["choice"], ((plain, "plain"), (augmented, "photometric augmentation"))
    lines = ["### Plain and photometrically augmented source models (the sceptic's baseline)", "",
             f"Target test accuracy on each shift; MNIST test (retention) is the mean over the "
             f"five tasks' runs. Calibrator: the default ({key}), mean ± sd over its seeds, "
             f"last epoch. Source models: `{plain}` (no augmentation) and `{augmented}` "
             "(`train-classifier --augment photometric`, same 3 epochs, seed 0).", "",
             "| source model | method | " + " | ".join(s.removeprefix("mnist-") for s in PHOTOMETRIC)
             + " | mean of five | MNIST test (retention) |", "|---|---|" + "---|" * 7]
    means: dict = {}
    for recipe, title in models:
        tasks = accuracy.get(recipe, {})
        for method, label in (*BASELINES.items(), (key, f"calibrator {key}")):
            per_task = []
            for t in PHOTOMETRIC:
                entry = tasks.get(t, {})
                runs = list(entry["runs"].get(key, {}).values()) if method == key else (
                    [entry[method]] if method in entry else [])
                per_task.append(runs)
            if not any(per_task):
                continue
            cells = [mean_sd([r["target"] for r in runs]) if runs else "-" for runs in per_task]
            complete = all(per_task)
            mean = _mean([_mean([r["target"] for r in runs]) for runs in per_task]) if complete else None
            source = _mean([r["source"] for runs in per_task for r in runs])
            means[(recipe, method)] = mean
            lines.append(f"| {title} | {label} | " + " | ".join(cells) + " | "
                         + (f"{mean:.1f}" if mean is not None else "-") + f" | {source:.1f} |")
    lines.append("")

    def gap(a, b):
        x, y = means.get(a), means.get(b)
        return None if x is None or y is None else x - y

    bought = gap((augmented, "source_only"), (plain, "source_only"))
    on_top = gap((augmented, key), (augmented, "source_only"))
    over_hm = gap((augmented, key), (augmented, "histogram"))
    over_adabn = gap((augmented, key), (augmented, "adabn"))
    if None not in (bought, on_top, over_hm, over_adabn):
        lines += [f"Mean of the five shifts: photometric augmentation alone moves source-only "
                  f"accuracy by {bought:+.1f} points; on the augmented model the default "
                  f"calibrator adds {on_top:+.1f} over source only, {over_hm:+.1f} over histogram "
                  f"matching and {over_adabn:+.1f} over AdaBN"
                  + (" (below histogram matching + 1 point)." if over_hm < 1 else "."), ""]
    return lines


def markdown(accuracy: dict, costs: dict, default: dict | None, int8: dict | None = None) -> str:
    lines = []
    table = overheads(costs)
    if table:
        fronts, prov = list(costs["backbones"]), costs.get("provenance", {})
        lines += ["### What each calibrator costs in front of the frozen model", "",
                  f"ONNX Runtime {prov.get('versions', {}).get('onnxruntime', '?')} on the CPU "
                  f"({prov.get('cpu', '?')}, {prov.get('cores', '?')} cores), 1 thread, batch 1, "
                  "the fused graph; overhead = "
                  "median over interleaved rounds of (fused - classifier alone), same run; "
                  "`/int8` rows: the same calibrator quantised to INT8, in front of the INT8 "
                  "fronts only. "
                  "Fronts: " + "; ".join(f"{f} ({costs['backbones'][f]['classifier']}, alone "
                                         f"{costs['backbones'][f]['rows']['classifier']['latency_median_ms']:.2f} ms)"
                                         for f in fronts) + ".", "",
                  "| family / size | ONNX nodes | params | MACs 32x32 | MACs 480x360 | "
                  + " | ".join(f"overhead {f}" for f in fronts) + " |",
                  "|---|---|---|---|---|" + "---|" * len(fronts)]
        def order(key):  # cheapest first by the worst front; an INT8 variant after its float one
            base = key.removesuffix("/int8")
            return max(r["overhead_pct"] for r in table.get(base, table[key]).values()), key != base

        for key in sorted(table, key=order):
            rows = table[key]
            small = next((r for f, r in rows.items() if "32x32" in f), {})
            big = next((r for f, r in rows.items() if "480x360" in f), {})
            lines.append(f"| {key} | {small.get('nodes', '-')} | {small.get('params', 0):,} | "
                         f"{small.get('macs', 0):,} | {big.get('macs', 0):,} | "
                         + " | ".join(f"{rows[f]['overhead_pct']:+.1f}% ({rows[f]['overhead_ms']:.3f} ms)"
                                      if f in rows else "-" for f in fronts) + " |")
        lines.append("")
    for recipe, tasks in sorted(accuracy.items(), key=lambda kv: kv[0] != "plain"):
        order = [t for t in (*DEV, *CONFIRM, *SHAPE) if t in tasks]
        keys = sorted({k for t in order for k in tasks[t]["runs"]})
        lines += [f"### Accuracy, {recipe} source classifier (target test, last epoch; source "
                  "test in brackets; mean ± standard deviation over seeds where several ran)", "",
                  "| calibrator | " + " | ".join(order) + " | mean dev (seed 0) | mean confirm (seed 0) "
                  "| mean of the five photometric (seeds) |",
                  "|---|" + "---|" * (len(order) + 3)]
        for baseline, label in BASELINES.items():
            if not any(baseline in tasks[t] for t in order):
                continue
            scored = [tasks[t].get(baseline, {}) for t in order]
            lines.append(f"| {label} | " + " | ".join(
                f"{s['target']:.1f} ({s['source']:.1f})" if s else "-" for s in scored)
                + " | " + mean_sd([tasks[t][baseline]["target"] for t in DEV if baseline in tasks.get(t, {})])
                + " | " + mean_sd([tasks[t][baseline]["target"] for t in CONFIRM if baseline in tasks.get(t, {})])
                + " | " + (f"{_mean([tasks[t][baseline]['target'] for t in PHOTOMETRIC]):.1f}"
                           if all(baseline in tasks.get(t, {}) for t in PHOTOMETRIC) else "-")
                + " |")
        for key in keys:
            cells, dev, conf = [], [], []
            for t in order:
                runs = tasks[t]["runs"].get(key, {})
                targets = [r["target"] for r in runs.values()]
                sources = [r["source"] for r in runs.values()]
                cells.append(f"{mean_sd(targets)} ({mean_sd(sources)})" if targets else "-")
                if targets and 0 in runs:
                    (dev if t in DEV else conf if t in CONFIRM else []).append(runs[0]["target"])
            mark = " **default**" if default and default["choice"] == key and recipe == "plain" else ""
            lines.append(f"| {key}{mark} | " + " | ".join(cells) + " | "
                         + (f"{_mean(dev):.1f}" if len(dev) == len(DEV) else "-") + " | "
                         + (f"{_mean(conf):.1f}" if len(conf) == len(CONFIRM) else "-") + " | "
                         + photometric_mean(tasks, key) + " |")
        lines.append("")
    lines += int8_markdown(int8 or {})
    lines += augmentation_markdown(accuracy, default)
    if default:
        lines += [f"Default chosen by rule ({default['rule']}): **{default['choice']}**, mean "
                  f"{default['dev_mean']:.1f} on the development shifts against "
                  f"{default['best_dev_mean']:.1f} for the best ({default['best']}); its largest "
                  f"overhead over the fronts measured is {default['worst_front_overhead_pct']:+.1f}%.", ""]
    return "\n".join(lines)


def plot(accuracy: dict, costs: dict, folder: Path) -> str | None:
    table = overheads(costs)
    plain = accuracy.get("plain", {})
    if not table or not plain:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fronts = list(costs["backbones"])
    groups = (("photometric (dev + confirm)", (*DEV, *CONFIRM)), ("shape (MNIST <-> USPS)", SHAPE))
    fig, axes = plt.subplots(len(groups), len(fronts), figsize=(4.6 * len(fronts), 7.5),
                             squeeze=False)
    for row, (title, tasks) in enumerate(groups):
        for col, front in enumerate(fronts):
            ax = axes[row][col]
            for key, rows in table.items():
                if front not in rows:
                    continue
                accs = [plain[t]["runs"][key][0]["target"] for t in tasks
                        if key in plain.get(t, {}).get("runs", {}) and 0 in plain[t]["runs"][key]]
                if len(accs) != len(tasks):
                    continue
                ax.scatter(rows[front]["overhead_pct"], statistics.mean(accs),
                           color=f"C{sorted(table).index(key) % 10}")
                ax.annotate(key, (rows[front]["overhead_pct"], statistics.mean(accs)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            base = [plain[t]["source_only"]["target"] for t in tasks if "source_only" in plain.get(t, {})]
            if len(base) == len(tasks):
                ax.axhline(statistics.mean(base), color="grey", ls=":", lw=1)
            ax.axvline(10, color="k", ls="--", lw=1)
            ax.set_xscale("symlog", linthresh=10)
            worst = max((r[front]["overhead_pct"] for r in table.values() if front in r),
                        default=10)
            ax.set_xlim(0, 3 * max(worst, 10))  # room for the labels right of the points
            ax.set_xlabel(f"latency overhead, % ({front})", fontsize=8)
            ax.set_ylabel(f"mean target accuracy, % — {title}", fontsize=8)
    fig.suptitle("Calibrators: accuracy against latency overhead (dotted: source only; "
                 "dashed: +10%)", fontsize=9)
    fig.tight_layout()
    name = "accuracy_vs_overhead.png"
    fig.savefig(folder / name, dpi=120)
    plt.close(fig)
    return name


def write_report(results: Path, readme: Path | None = None) -> None:
    accuracy = collect_accuracy(results)
    costs_path = results / "costs" / "costs.json"
    costs = json.loads(costs_path.read_text()) if costs_path.exists() else {}
    default = choose_default(accuracy, costs)
    int8 = collect_int8(results)
    picture = plot(accuracy, costs, results)
    md = markdown(accuracy, costs, default, int8)
    if picture:
        md += f"\n![accuracy against overhead](benchmarks/results/calibrators/{picture})\n"
    (results / "calibrators.json").write_text(json.dumps(
        {"accuracy": accuracy, "int8": int8, "default": default}, indent=2) + "\n")
    (results / "calibrators.md").write_text("# Calibrator families (generated by "
                                            "`python benchmarks/calibrators.py report`)\n\n" + md)
    replace_readme_section(readme, "calibrators", md)
    print(md)
