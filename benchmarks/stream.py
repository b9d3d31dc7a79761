#!/usr/bin/env python3
"""Stream evidence: a generated video (real MNIST/USPS test images, domain changing every
segment) through `edge-calib run` headless, with --domain auto, with the source-only identity
calibrator everywhere, with the target calibrator everywhere, and with switch commands typed on
``--control -`` (the time from each command to the first frame computed with the new
calibrator, and the frames dropped meanwhile).

    python benchmarks/stream.py --deploy runs/bench/mnist-usps/seed0/bundle --frames 2400

Writes benchmarks/results/stream/stream.json and stream.md (commands, commit, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_calib.data import load_dataset  # noqa: E402
from edge_calib.core.provenance import capture  # noqa: E402
from edge_calib.runtime.testvideo import (  # noqa: E402
    alternating_segments,
    score_predictions,
    write_domain_video,  # noqa: E402
)


def run(args: list[str], commands: list[str] = (), interval: float = 1.0) -> dict:
    """``edge-calib ARGS``; ``commands`` are typed on its standard input (``--control -``) one
    every ``interval`` seconds, starting after one interval. Its output goes to temporary
    files, not pipes: a pipe nobody reads while commands are typed could fill and stall it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(["edge-calib", *args], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=out, stderr=err, text=True)
        for command in commands:
            time.sleep(interval)
            if proc.poll() is not None:
                break
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        proc.stdin.close()
        proc.wait()
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(err.read())
        return json.loads(out.read().strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deploy")
    p.add_argument("--frames", type=int, default=2400)
    p.add_argument("--segment", type=int, default=300)
    p.add_argument("--data-root", default=os.environ.get("EDGE_CALIB_DATA",
                                                         str(ROOT.parent / "shared" / "data")))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream"))
    p.add_argument("--report", action="store_true", help="Only rewrite stream.md from stream.json.")
    args = p.parse_args()
    out = Path(args.out)
    if args.report:
        (out / "stream.md").write_text(markdown(json.loads((out / "stream.json").read_text())))
        return
    if not args.deploy:
        p.error("--deploy is required")
    out.mkdir(parents=True, exist_ok=True)
    work = ROOT / "runs" / "stream"
    work.mkdir(parents=True, exist_ok=True)
    data = {d: load_dataset(d, "test", args.data_root) for d in ("mnist", "usps")}
    video = work / "stream.avi"
    truth = write_domain_video(video, alternating_segments(data, args.segment,
                                                           args.frames // args.segment))
    sha = capture()["commit"]
    results = {"video": {"frames": len(truth["frames"]), "segments": truth["segments"],
                         "size": truth["size"]},
               "commit": sha, "machine": capture(), "runs": {}}
    runs = {"auto": ["--domain", "auto"], "source_only": ["--domain", "mnist"],
            "usps_calibrator_everywhere": ["--domain", "usps"],
            "auto_realtime_300fps": ["--domain", "auto", "--realtime", "--fps", "300"],
            "commands_realtime_100fps": ["--domain", "mnist", "--control", "-", "--realtime",
                                         "--fps", "100"]}
    # a switch command every second through --control -, alternating the two domains
    typed = {"commands_realtime_100fps": [f"domain {d}" for d in ("usps", "mnist") * 10]}
    for name, extra in runs.items():
        preds = work / f"{name}.jsonl"
        cmd = ["run", "--deploy", args.deploy, "--input", str(video), "--headless", "--json",
               "--predictions", str(preds), *extra]
        if name == "auto":
            cmd += ["--output", str(work / "annotated_auto.avi")]
        print(f"[{name}] edge-calib {shlex.join(cmd)}", file=sys.stderr, flush=True)
        summary = run(cmd, typed.get(name, ()))
        results["runs"][name] = {"command": "edge-calib " + shlex.join(cmd),
                                 "summary": {k: v for k, v in summary.items() if k != "switch_log"},
                                 "switch_log": summary["switch_log"],
                                 "typed_commands": typed.get(name, []),
                                 "scores": score_predictions(preds, truth)}
    (out / "stream.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "stream.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    auto, base, every = (r["runs"][k] for k in ("auto", "source_only", "usps_calibrator_everywhere"))
    s = auto["summary"]
    m = r["machine"]
    lines = ["# Stream evidence (generated by `benchmarks/stream.py`)", "",
             f"Video: {r['video']['frames']} frames of {'x'.join(map(str, r['video']['size']))} px, "
             "segments "
             + ", ".join(f"{x['domain']}×{x['frames']}" for x in r["video"]["segments"]) + ".",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {platform.python_version()}; commit "
             f"{r['commit'][:10]}.", "",
             "| true domain | frames | source only (identity) | usps calibrator everywhere | "
             "--domain auto | auto-domain frame accuracy | running domain correct |",
             "|---|---|---|---|---|---|---|"]
    for d in sorted(auto["scores"]):
        a = auto["scores"][d]
        lines.append(f"| {d} | {a['frames']} | {base['scores'][d]['accuracy']:.1f} | "
                     f"{every['scores'][d]['accuracy']:.1f} | {a['accuracy']:.1f} | "
                     f"{a.get('auto_frame_accuracy', 0):.1f} | {a['running_domain_correct_pct']:.1f} |")
    lines += ["", f"`--domain auto`: {s['frames']} frames, {s['fps']:.1f} FPS end to end, "
                  f"{s['dropped']} dropped, {s['corrupt']} corrupt, {s['switches']} switches "
                  f"(command to first frame with the new calibrator: median "
                  f"{s['switch_to_first_frame_ms'].get('median', 0):.2f} ms).", "",
              "| stage | mean ms | p50 | p95 | p99 |", "|---|---|---|---|---|"]
    for stage, st in s["stages_ms"].items():
        if not st.get("count"):  # the fused graph runs calibrator and model as one stage
            continue
        lines.append(f"| {stage} | {st['mean']:.3f} | {st['median']:.3f} | {st['p95']:.3f} | {st['p99']:.3f} |")
    rt = r["runs"]["auto_realtime_300fps"]["summary"]
    c = r["runs"]["commands_realtime_100fps"]["summary"]
    lines += ["", f"Switch commands (`domain usps` / `domain mnist` typed on `--control -` once a "
                  f"second, paced at 100 FPS): {c['switches']} switches, command to first frame "
                  f"computed with the new calibrator median "
                  f"{c['switch_to_first_frame_ms'].get('median', 0):.2f} ms, p95 "
                  f"{c['switch_to_first_frame_ms'].get('p95', 0):.2f} ms, max "
                  f"{c['switch_to_first_frame_ms'].get('max', 0):.2f} ms; "
                  f"{c['switch_dropped_frames']} frames dropped meanwhile "
                  f"({c['dropped']} dropped in the whole run, {c['fps']:.1f} FPS)."]
    lines += ["", f"Paced at 300 FPS (`--realtime --fps 300`, a camera faster than the pipeline): "
                  f"{rt['frames']} processed, {rt['dropped']} dropped (oldest first), "
                  f"{rt['fps']:.1f} FPS.", "", "Commands:", ""]
    lines += [f"- `{v['command']}`" for v in r["runs"].values()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
