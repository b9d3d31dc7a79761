"""The adaptation loop end to end, unattended, through real processes (issue 32).

A bundle that knows one domain runs on a looping stream of real frames: a stretch of the known
domain, then a stretch of a new one, again and again, in real time. ``edge-calib run --domain
auto --unknown histogram --collect DIR --watch`` is one process; when its first collection of
the new domain is written, this script starts ``edge-calib adapt`` as a second process on that
collection; the running device picks the changed bundle up by itself (``--watch``), and the
script stops it (control socket ``quit``) once a later stretch of the new domain has run with
its new calibrator. From the run's predictions log and summary:

- frames of the new domain until the vote says ``unknown`` (the fallback engages);
- frames collected; ``adapt``'s wall time (while the stream keeps running on the same cores);
- seconds from the first ``unknown`` frame to the first frame run with the new calibrator;
- then, with ``edge-calib eval --deploy``, the new domain's labelled test frames with the frozen
  model alone (``--unknown model``), with the fallback (``--unknown histogram``) and with the
  adapted domain; the known domain's test frames before and after (they must not drop).

Cases (models you train first; see ``benchmarks/results/adapt_loop/README.md``):

- ``camvid``: an INT8 LR-ASPP segmenter whose bundle knows only ``day`` (the README's 2:4 +
  INT8 segmenter at 360x480, record ``camvid_full``; an earlier record, ``camvid``, used a
  40-epoch one at 180x240); stream = 40 day validation frames, then the 62 unlabelled dusk
  training frames; scored on the 62 dusk and 171 day test frames.
- ``digits``: an INT8 DTN whose bundle knows only ``mnist``; stream = 100 MNIST test digits,
  then 300 mnist:colour training digits; scored on 2,000 test digits of each.

    python benchmarks/adapt_loop.py camvid --bundle runs/adapt/day_bundle --data-root \
        ../shared/data --work runs/adapt/loop-camvid

writes ``benchmarks/results/adapt_loop/CASE.json`` and ``CASE.md`` (``--record NAME``: NAME.json,
NAME.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from edge_calib.core.provenance import capture, git_commit  # noqa: E402
from edge_calib.data import load_dataset  # noqa: E402
from edge_calib.runtime.control import send_command  # noqa: E402
from edge_calib.runtime.summary import RunSummary  # noqa: E402
from edge_calib.runtime.testvideo import write_domain_video  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "adapt_loop"
CASES = {
    # known domain, new domain, stream segments (dataset, split, count), fps, video frame size,
    # the labelled test sets (new, known) and how many of each are scored
    "camvid": {"known": "day", "new": "dusk", "fps": 10.0, "size": None,
               "stream": [("day", "camvid:day", "val", 40), ("dusk", "camvid:dusk", "train", 62)],
               "test": {"new": "camvid:dusk", "known": "camvid:day"}, "max_samples": None,
               "metric": "miou"},
    "digits": {"known": "mnist", "new": "colour", "fps": 30.0, "size": 96,
               "stream": [("mnist", "mnist", "test", 100), ("colour", "mnist:colour", "train", 300)],
               "test": {"new": "mnist:colour", "known": "mnist"}, "max_samples": 2000,
               "metric": "accuracy"},
}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "edge_calib.cli", *map(str, args)]


def evaluate(bundle: Path, dataset: str, how: list[str], case: dict, root: str) -> float:
    extra = [] if case["max_samples"] is None else ["--max-samples", case["max_samples"]]
    proc = subprocess.run(cli("eval", "--deploy", bundle, *how, "--dataset", dataset, "--split",
                              "test", "--json", "--data-root", root, *extra),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])[case["metric"]]


def finished_collection(folder: Path) -> Path | None:
    for child in sorted(folder.glob("*")) if folder.is_dir() else []:
        if (child / "collection.json").is_file():
            return child
    return None


def run_loop(name: str, case: dict, start_bundle: Path, work: Path, root: str,
             timeout_s: float) -> dict:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    bundle = work / "bundle"
    shutil.copytree(start_bundle, bundle)
    segments = []
    for domain, dataset, split, count in case["stream"]:
        images = load_dataset(dataset, split, root, unlabelled=True).images[:count]
        segments.append((domain, images, None))
    video = work / "stream.avi"
    write_domain_video(video, segments, size=case["size"], fps=case["fps"])
    loop_frames = sum(len(images) for _, images, _ in segments)
    truth = [d for d, images, _ in segments for _ in range(len(images))]
    sock, preds = work / "control.sock", work / "predictions.jsonl"
    run = subprocess.Popen(cli("run", "--input", video, "--loop", "--realtime", "--fps",
                               case["fps"], "--deploy", bundle, "--domain", "auto", "--unknown",
                               "histogram", "--collect", work / "collect", "--collect-rate", 0,
                               "--watch", "--headless", "--control", sock, "--predictions",
                               preds, "--json"),
                           stdout=subprocess.PIPE, stderr=open(work / "run.log", "w"), text=True)
    started = time.time()
    adapt_result, adapt_s, collection, done_at = None, None, None, None
    try:
        while time.time() - started < timeout_s and run.poll() is None:
            time.sleep(0.5)
            if collection is None:
                collection = finished_collection(work / "collect")
                if collection is None:
                    continue
                t0 = time.time()
                proc = subprocess.run(cli("adapt", "--deploy", bundle, "--frames", collection,
                                          "--domain", case["new"], "--quiet"),
                                      capture_output=True, text=True)
                adapt_s = time.time() - t0
                (work / "adapt.log").write_text(proc.stderr)
                if proc.returncode != 0:
                    raise SystemExit(f"adapt failed ({proc.returncode}): "
                                     f"{proc.stderr.strip().splitlines()[-1]}")
                adapt_result = json.loads(proc.stdout.strip().splitlines()[-1])
                done_at = time.time()
                continue
            status = send_command(str(sock), "status")
            if status.get("domain") == case["new"] and time.time() - done_at > 2:
                break
    finally:
        if run.poll() is None:
            try:
                send_command(str(sock), "quit")
            except OSError:
                run.terminate()
        out, _ = run.communicate(timeout=120)
    summary = RunSummary.from_dict(json.loads(out.strip().splitlines()[-1]))
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    first_new = next(r for r in records if truth[r["index"] % loop_frames] == case["new"])
    first_unknown = next((r for r in records if r["domain"] == "unknown"), None)
    calibrated = next((r for r in records if r["domain"] == case["new"]), None)
    detection = None if first_unknown is None else sum(
        1 for r in records if first_new["index"] <= r["index"] < first_unknown["index"]
        and truth[r["index"] % loop_frames] == case["new"])
    record = json.loads((collection / "collection.json").read_text()) if collection else {}
    return {"loop_frames": loop_frames, "frames_run": summary.frames,
            "run_exit": run.returncode, "run_error": summary.error,
            "first_new_frame": first_new["index"],
            "frames_until_unknown": detection,
            "fallback_on_first_unknown": None if first_unknown is None
            else first_unknown.get("fallback"),
            "frames_collected": record.get("frames"), "collection": record.get("sampling"),
            "adapt_wall_s": None if adapt_s is None else round(adapt_s, 1),
            "adapt": adapt_result,
            "unknown_to_calibrated_s": None if calibrated is None or first_unknown is None
            else round(calibrated["time"] - first_unknown["time"], 1),
            "reloads": summary.reloads, "switches": summary.switches}


def votes(bundle: Path, dataset: str, root: str) -> dict:
    """Each labelled test frame's own vote (no window) by the bundle's domain model: the share
    named each domain, or unknown."""
    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.runtime.domain_auto import AutoDomain, load_domain_model

    b = open_bundle(bundle)
    auto = AutoDomain(load_domain_model(b.domain_classifier_file(), b.domains))
    frames = b.spec.resize_uint8(load_dataset(dataset, "test", root).images[:2000])
    named = [auto.predict(frames[i:i + 1])["predicted"] for i in range(len(frames))]
    return {name: round(100.0 * named.count(name) / len(named), 1) for name in sorted(set(named))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--bundle", required=True, type=Path,
                        help="The starting bundle (it is copied; the copy is adapted).")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--record", help="The record's name under benchmarks/results/adapt_loop/ "
                                         "[default: the case's]")
    parser.add_argument("--rescore", action="store_true",
                        help="Keep the recorded loop (CASE.json) and the adapted bundle in "
                             "--work; score again.")
    args = parser.parse_args()
    case = CASES[args.case]
    name = args.record or args.case
    started = time.time()
    if args.rescore:
        previous = json.loads((OUT / f"{name}.json").read_text())
        loop = previous["loop"]
    else:
        loop = run_loop(args.case, case, args.bundle, args.work, args.data_root, args.timeout)
    adapted, tests = args.work / "bundle", case["test"]
    scores = {
        "new_frozen": evaluate(args.bundle, tests["new"], ["--unknown", "model"], case,
                               args.data_root),
        "new_fallback": evaluate(args.bundle, tests["new"], ["--unknown", "histogram"], case,
                                 args.data_root),
        "new_adapted": evaluate(adapted, tests["new"], ["--domain", case["new"]], case,
                                args.data_root),
        "known_before": evaluate(args.bundle, tests["known"], ["--domain", case["known"]], case,
                                 args.data_root),
        "known_after": evaluate(adapted, tests["known"], ["--domain", case["known"]], case,
                                args.data_root)}
    vote = {"new_test_frames": votes(adapted, tests["new"], args.data_root),
            "known_test_frames": votes(adapted, tests["known"], args.data_root)}
    commit, dirty = git_commit()
    if args.rescore:
        commit, dirty = previous["commit"], previous["dirty"]  # the loop's own commit
    report = {"case": args.case, "metric": case["metric"], "scores": scores, "loop": loop,
              "votes_after": vote,
              "command": previous["command"] if args.rescore else
              " ".join(["python", "benchmarks/adapt_loop.py", *sys.argv[1:]]),
              "commit": commit, "dirty": dirty, "machine": capture(),
              "wall_s": previous["wall_s"] if args.rescore else round(time.time() - started, 1)}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / f"{name}.json", report)
    write_bytes_atomic(OUT / f"{name}.md", markdown(report).encode())
    print(markdown(report))


def markdown(r: dict) -> str:
    s, loop, m = r["scores"], r["loop"], r["metric"]
    case = CASES[r["case"]]
    return "\n".join([
        f"# Adaptation loop: {r['case']} ({case['known']} -> {case['new']})", "",
        f"`{r['command']}` at {r['commit'][:7]}{' (dirty)' if r['dirty'] else ''}; "
        f"{r['machine'].get('cpu')}, {r['machine'].get('cores')} cores.", "",
        f"| {m} on test frames | {case['new']} | {case['known']} |", "|---|---|---|",
        f"| frozen model alone | {s['new_frozen']:.1f} | {s['known_before']:.1f} |",
        f"| fallback while unknown (histogram) | {s['new_fallback']:.1f} | |",
        f"| after adapt | {s['new_adapted']:.1f} | {s['known_after']:.1f} |", "",
        f"- frames of {case['new']} until the vote said unknown: {loop['frames_until_unknown']} "
        f"(first unknown frame ran with fallback: {loop['fallback_on_first_unknown']})",
        f"- frames collected: {loop['frames_collected']}; adapt chose "
        f"{(loop['adapt'] or {}).get('chosen')} (statistics distances "
        f"{(loop['adapt'] or {}).get('scores')})",
        f"- adapt: {loop['adapt_wall_s']} s wall, the stream running beside it",
        f"- first unknown frame -> first frame with the new calibrator: "
        f"{loop['unknown_to_calibrated_s']} s",
        f"- the run: {loop['frames_run']} frames, exit {loop['run_exit']}, error "
        f"{loop['run_error']}, reloads {loop['reloads']}",
        f"- each test frame's own vote after adapt (%, no window): {case['new']} test frames "
        f"{r['votes_after']['new_test_frames']}, {case['known']} test frames "
        f"{r['votes_after']['known_test_frames']}", ""])


if __name__ == "__main__":
    main()
