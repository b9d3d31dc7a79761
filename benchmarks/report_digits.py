"""Aggregate ``benchmarks/results/digits`` into digits.json, digits.md and the RESULTS.md section."""

from __future__ import annotations

import json
from pathlib import Path

from report_common import load_records, markers, mean_sd, replace_readme_section

BEGIN, END = markers("digits")  # the RESULTS.md section (tests look for it)
ROWS = [  # (label, target step, source step)
    ("source only (float DTN)", "source_only_target", "source_only_source"),
    ("AdaBN (changes the deployed model)", "adabn_target", "adabn_source"),
    ("calibrator, edge-calib recipe", "ours_target", "ours_source"),
    ("calibrator, edge-calib recipe at lr 3e-4", "ours_lr3e-4_target", "ours_lr3e-4_source"),
    ("calibrator, reference-code behaviour", "reference_target", "reference_source"),
    ("source only, INT8 2:4 bundle (ONNX Runtime)", "int8_source_only_target", "int8_source_only_source"),
    ("calibrator, INT8 2:4 bundle (ONNX Runtime)", "int8_target", "int8_source"),
]


def collect(results: Path) -> dict:
    tasks = {}
    for task_dir in sorted(p for p in results.iterdir() if p.is_dir()):
        seeds = {p.name: load_records(p) for p in sorted(task_dir.glob("seed*"))}
        table = []
        for label, t_step, s_step in ROWS:
            train = label.split(",")[0] == "calibrator" and t_step.replace("_target", "_train")
            # Rows without a calibrator depend on the classifier alone: a seed that reuses
            # another seed's classifier (--classifier-from) repeats its number, so skip it.
            rows = [s for s in seeds.values() if train or "classifier" in s]
            t = [s[t_step]["result"]["accuracy"] for s in rows if t_step in s]
            src = [s[s_step]["result"]["accuracy"] for s in rows if s_step in s]
            if not t:
                continue
            last5 = [s[train]["result"]["last5_monitor_target_test_acc"] for s in seeds.values()
                     if train and train in s]
            epochs = sorted({s[train]["result"]["epochs"] for s in seeds.values()
                             if train and train in s})
            per_epoch = [s[train]["result"]["time_per_epoch_s"] for s in seeds.values()
                         if train and train in s]
            commands = {name: s[step]["command"] for name, s in seeds.items()
                        for step in ([t_step, s_step] + ([train] if train else [])) if step in s}
            table.append({"method": label, "target_acc": t, "source_acc": src,
                          "target_last5_mean": last5, "epochs": epochs,
                          "time_per_epoch_s": per_epoch, "seeds": sorted(seeds),
                          "commands": commands})
        sweeps = {}
        for name in seeds:
            for sweep_dir in sorted(task_dir.joinpath(name).glob("sweep_e*")):
                rows = load_records(sweep_dir)
                for key, rec in rows.items():
                    if not key.endswith("_target"):
                        continue
                    cfg = key[:-len("_target")]
                    entry = {"target_acc": rec["result"]["accuracy"],
                             "source_acc": rows.get(f"{cfg}_source", {}).get("result", {}).get("accuracy"),
                             "params": rec["result"]["calibrator_params"],
                             "command": rows.get(f"{cfg}_train", {}).get("command")}
                    lat = rows.get(f"{cfg}_latency", {}).get("result")
                    if lat:
                        ratios = next(iter(lat["overhead_ratios"].values()))
                        chain = next(iter(lat["onnxruntime"]["batch1"]["overhead"].values()))["chain"]
                        entry |= {"macs_pct": ratios["macs_pct_of_classifier"],
                                  "latency_overhead_ms": chain["ms"], "latency_overhead_pct": chain["pct"]}
                    sweeps.setdefault(f"{name}/{sweep_dir.name}", {})[cfg] = entry
        commit = {rec["commit"] for s in seeds.values() for rec in s.values()}
        machines = {rec["machine"]["cpu"] + (f" + {rec['machine']['gpu']}" if rec["machine"]["gpu"] else "")
                    for s in seeds.values() for rec in s.values()}
        tasks[task_dir.name] = {"table": table, "sweeps": sweeps, "commits": sorted(commit),
                                "machines": sorted(machines), "seeds": seed_provenance(seeds)}
    return tasks


def _machine(rec: dict) -> str:
    return rec["machine"]["gpu"] or f"{rec['machine']['cpu']} CPU"


def seed_provenance(seeds: dict) -> dict:
    """Per seed: whether it trained its own classifier, and where its calibrators trained."""
    out = {}
    for name, s in seeds.items():
        trained = sorted({f"{step[:-len('_train')]}: {_machine(rec)}"
                          + (" (resumed there from another machine; see its record)"
                             if "machine_note" in rec else "")
                          for step, rec in s.items() if step.endswith("_train")})
        out[name] = {"own_classifier": "classifier" in s, "calibrators": trained}
    return out


def _option(command: str | None, flag: str) -> str | None:
    words = (command or "").split()
    return words[words.index(flag) + 1] if flag in words else None


def markdown(tasks: dict) -> str:
    out = []
    for task, data in tasks.items():
        if not data["table"]:
            continue
        src, tgt, *extra = task.split("-")
        how = ", source classifier trained with --augment" if "augment" in extra else ""
        out.append(f"### {src.upper()} → {tgt.upper()} (DTN{how}, real data)\n")
        out.append(f"| method | {tgt.upper()} test (target) | mean of last 5 epochs | "
                   f"{src.upper()} test (source, retention) | epochs |")
        out.append("|---|---|---|---|---|")
        for row in data["table"]:
            out.append(f"| {row['method']} | {mean_sd(row['target_acc'])} | "
                       f"{mean_sd(row['target_last5_mean'])} | {mean_sd(row['source_acc'])} | "
                       f"{','.join(map(str, row['epochs'])) or '-'} |")
        out.append("")
        for seed, prov in data["seeds"].items():
            clf = "own source classifier" if prov["own_classifier"] else "seed0's source classifier"
            out.append(f"- {seed}: {clf}; calibrators trained on "
                       f"{', '.join(prov['calibrators']) or '-'}")
        for sweep, rows in data["sweeps"].items():
            lr = {_option(r["command"], "--lr") for r in rows.values()} - {None}
            out.append(f"\nCalibrator size sweep ({sweep}: {sweep.split('_e')[1]} epochs, lr "
                       f"{', '.join(sorted(lr)) or '-'}, last epoch; latency overhead measured with "
                       "ONNX Runtime, batch 1, interleaved with the classifier alone):\n")
            out.append("| width × blocks | parameters | MACs % of classifier | latency overhead ms (%) "
                       "| target | source |")
            out.append("|---|---|---|---|---|---|")
            best = max(r["target_acc"] for r in rows.values())
            for cfg, r in sorted(rows.items(), key=lambda kv: kv[1]["params"]):
                lat = (f"{r['latency_overhead_ms']:.3f} ({r['latency_overhead_pct']:.1f}%)"
                       if "latency_overhead_ms" in r else "-")
                macs = f"{r['macs_pct']:.1f}" if "macs_pct" in r else "-"
                mark = " ✓" if r["target_acc"] >= best - 0.5 else ""
                out.append(f"| {cfg} | {r['params']:,} | {macs} | {lat} | {r['target_acc']:.1f}{mark} | "
                           f"{r['source_acc'] if r['source_acc'] is not None else '-'} |")
            within = [c for c, r in rows.items() if r["target_acc"] >= best - 0.5]
            smallest = min(within, key=lambda c: rows[c]["params"])
            out.append(f"\nSmallest calibrator within 0.5 points of the best ({best:.1f}): "
                       f"**{smallest}** ({rows[smallest]['params']:,} parameters). ✓ marks all within.")
        out.append(f"\nCommits: {', '.join(c[:10] for c in data['commits'])}. "
                   f"Machines: {'; '.join(data['machines'])}. Exact commands: "
                   f"`benchmarks/results/digits/{task}/seed*/*.json`.\n")
    return "\n".join(out)


def plot_sweeps(tasks: dict, folder: Path) -> list[str]:
    """accuracy_vs_overhead_<task>.png: target accuracy against measured latency overhead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, data in tasks.items():
        for rows in data["sweeps"].values():
            pts = [(r["latency_overhead_pct"], r["target_acc"], c) for c, r in rows.items()
                   if "latency_overhead_pct" in r]
            if not pts:
                continue
            fig, ax = plt.subplots(figsize=(5.5, 4))
            ax.scatter([p[0] for p in pts], [p[1] for p in pts])
            for x, y, c in pts:
                ax.annotate(c, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("latency overhead, % of classifier alone (ONNX Runtime, batch 1)")
            ax.set_ylabel("target accuracy, %")
            ax.set_title(f"{task}: calibrator width × blocks")
            fig.tight_layout()
            name = f"accuracy_vs_overhead_{task}.png"
            fig.savefig(folder / name, dpi=120)
            plt.close(fig)
            written.append(name)
    return written


def write_report(results: Path, readme: Path | None = None) -> None:
    tasks = collect(results)
    plot_sweeps(tasks, results)
    (results / "digits.json").write_text(json.dumps(tasks, indent=2) + "\n")
    md = markdown(tasks)
    (results / "digits.md").write_text("# Digits accuracy (generated by "
                                       "`python benchmarks/digits.py report`)\n\n" + md)
    replace_readme_section(readme, "digits", md)
    print(md)
