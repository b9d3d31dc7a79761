"""``edge-calib bench``: latency, compute and overhead of a bundle, as JSON, Markdown and PNG."""

from __future__ import annotations

import dataclasses
import datetime
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..core.errors import EdgeCalibError
from ..core.fileio import write_bytes_atomic, write_json_atomic
from ..core.provenance import capture as capture_provenance
from ..deploy.bundle import open_bundle
from ..engines import BACKENDS, open_engines
from .graphs import graph_costs
from .latency import engine_configs, latency_table, measure
from .roofline import project

PAPER = {"ratio_to_dtn_pct": 5.8, "segmentation_ratio_pct": 0.24}


@dataclass
class BenchReport:
    """What ``bench`` measures (``report.json``, keyed as ``to_dict`` writes it), read by the
    Markdown report, the plots and the command's ``--json`` line."""

    created: str
    command: str
    deploy: str
    environment: dict  # core.provenance.capture
    bundle: dict  # classifier fingerprint, precision, sparsity, domains
    method: dict  # iterations, warm-up, interleaving, the statistic
    latency: dict = field(default_factory=dict)  # backend -> batchN -> latency_table, or skipped
    static: dict = field(default_factory=dict)  # static_costs
    overhead_ratios: dict = field(default_factory=dict)
    jetson_projection_estimate: dict = field(default_factory=dict)  # roofline.project
    stream: dict | None = None  # stream_benchmark, where a video ran
    plots: list | str | None = None  # the PNGs written, or why none

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if v is not None or k not in ("stream", "plots")}
DTN_PARAMS, LENET_PARAMS = 3_133_962, 431_080


def static_costs(bundle) -> dict:
    cls = graph_costs(onnx.load(str(bundle.classifier_file("onnxruntime"))))
    parts = {"classifier": cls}
    for domain in bundle.domains:
        path = bundle.calibrator_file(domain, "onnxruntime")
        if path is not None:
            cal = graph_costs(onnx.load(str(path)))
            parts[f"calibrator[{domain}]"] = cal
            parts[f"pair[{domain}]"] = {k: cls[k] + cal[k] for k in
                                        ("params", "macs", "weight_bytes", "activation_bytes_total")}
            parts[f"pair[{domain}]"]["activation_bytes_peak"] = max(cls["activation_bytes_peak"],
                                                                     cal["activation_bytes_peak"])
    return parts


def overhead_ratios(parts: dict) -> dict:
    cls = parts["classifier"]
    out = {}
    for name, c in parts.items():
        if not name.startswith("calibrator["):
            continue
        out[name] = {
            "params_pct_of_classifier": 100.0 * c["params"] / cls["params"],
            "macs_pct_of_classifier": 100.0 * c["macs"] / cls["macs"],
            "weight_bytes_pct_of_classifier": 100.0 * c["weight_bytes"] / cls["weight_bytes"],
            "params_pct_of_dtn": 100.0 * c["params"] / DTN_PARAMS,
            "params_pct_of_lenet": 100.0 * c["params"] / LENET_PARAMS,
            "paper_claims_pct": PAPER}
    return out


def upscaled_video(video: str, factor: int, folder: Path) -> str:
    """A copy of ``video`` with every frame enlarged ``factor`` times (linear), as a camera of
    that resolution would deliver the same scene."""
    import cv2

    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    path = folder / f"x{factor}.avi"
    writer = None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        big = cv2.resize(frame, (frame.shape[1] * factor, frame.shape[0] * factor),
                         interpolation=cv2.INTER_LINEAR)
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                     (big.shape[1], big.shape[0]))
        writer.write(big)
    cap.release()
    if writer is not None:
        writer.release()
    return str(path)


def stage_share(bundle_dir: str, video: str, domain: str, threads: int) -> dict:
    """The whole video through ``run --domain DOMAIN --headless`` as fast as it goes: median
    stage times and the share of the median frame spent outside the network."""
    import cv2

    from ..runtime.sources import parse_source
    from ..runtime.stream import RunOptions, StreamRunner

    cap = cv2.VideoCapture(video)
    size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
    cap.release()
    s = StreamRunner(RunOptions(deploy=bundle_dir, domain=domain, headless=True, threads=threads),
                     parse_source(None, video)).run()
    st = s.stages_ms
    total, network = st["total"]["median"], st["network"]["median"]
    return {"domain": domain, "frames": s.frames, "fps": s.fps,
            "frame_size": size,
            "median_ms": {k: v["median"] for k, v in st.items() if v.get("count")},
            "outside_network_pct": round(100 * (total - network) / total, 1)}


def stream_benchmark(bundle_dir: str, video: str, fps: float = 30.0,
                     switch_every_s: float = 0.25, threads: int = 0) -> dict:
    """Through ``edge-calib run``, headless: (1) the whole video as fast as it goes with
    ``--domain auto`` (end-to-end FPS, automatic switches); (2) where the frame time goes with
    a fixed domain, at the video's resolution and upscaled 2x; (3) the video paced as a live
    camera at ``fps`` (oldest frames dropped when behind) while a client sends ``domain NAME``
    on the control socket every ``switch_every_s``: per switch, the time from the command's
    arrival to the first frame computed with the new calibrator, and the frames dropped."""
    from ..runtime.control import send_command
    from ..runtime.sources import parse_source
    from ..runtime.stream import RunOptions, StreamRunner

    runner = StreamRunner(RunOptions(deploy=bundle_dir, domain="auto", headless=True,
                                     threads=threads), parse_source(None, video))
    auto = runner.run()
    bundle = runner.controller.bundle
    names = bundle.domains
    calibrated = next((d for d in names if bundle.calibrator(d) is not None), names[0])
    with tempfile.TemporaryDirectory() as scratch:
        shares = {"1x": stage_share(bundle_dir, video, calibrated, threads),
                  "2x": stage_share(bundle_dir, upscaled_video(video, 2, Path(scratch)),
                                    calibrated, threads)}
    with tempfile.TemporaryDirectory() as scratch:
        sock = str(Path(scratch) / "ec.sock")
        live = StreamRunner(RunOptions(deploy=bundle_dir, domain=names[0], headless=True,
                                       control=sock, realtime=True, threads=threads),
                            parse_source(None, video, fps=fps))
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(summary=live.run()))
        thread.start()
        k = 0
        while thread.is_alive():
            time.sleep(switch_every_s)
            k += 1
            try:
                send_command(sock, f"domain {names[k % len(names)]}", timeout=2.0)
            except OSError:  # the run ended between the check and the command
                break
        thread.join()
    paced = result["summary"]
    return {"video": video, "frames": auto.frames, "fps": auto.fps,
            "stages_ms": auto.stages_ms, "auto_switches": auto.switch_log,
            "where_time_goes": shares, "threads": threads,
            "dropped": auto.dropped,
            "switching": {"paced_fps": fps, "command_every_s": switch_every_s,
                          "frames": paced.frames, "switches": paced.switches,
                          "to_first_frame_ms": paced.switch_to_first_frame_ms,
                          "dropped_during_switches": paced.switch_dropped_frames,
                          "dropped_total": paced.dropped}}


def make_video(bundle, data_root, folder: Path, frames: int) -> str | None:
    """A video alternating the bundle's domains (their own test images), or None."""
    entry = bundle.manifest.domain_classifier
    sources = entry.trained_on if entry is not None else None
    if not sources:
        return None
    from ..data import load_dataset
    from ..runtime.testvideo import alternating_segments, write_domain_video

    data = {domain: load_dataset(dataset, "test", data_root) for domain, dataset in sources.items()}
    path = folder / "stream.avi"
    write_domain_video(path, alternating_segments(data, max(1, frames // (2 * len(data))),
                                                  2 * len(data)))
    return str(path)


def run_bench(deploy: str, report_dir: str, batches=(1, 16), iterations: int = 200,
              warmup: int = 20, threads: int = 0, video: str | None = None, data_root=None,
              stream_frames: int = 600, stream: bool = True,
              log=print) -> BenchReport:
    bundle = open_bundle(deploy)
    out_dir = Path(report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    domains = bundle.domains
    parts = static_costs(bundle)
    report = BenchReport(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(sys.argv), deploy=str(deploy),
        environment=capture_provenance(threads or None),
        bundle={"classifier_fingerprint": bundle.manifest.classifier.fingerprint,
                "precision": bundle.manifest.classifier.precision,
                "sparsity": bundle.manifest.classifier.sparsity, "domains": domains},
        method={"iterations": iterations, "warmup": warmup, "interleaved": True,
                "statistic": "median; overhead = median of per-round paired differences"},
        static=parts, overhead_ratios=overhead_ratios(parts),
        jetson_projection_estimate=project(dict(parts)))
    for backend in BACKENDS:
        try:
            fused = open_engines(bundle, backend, threads=threads, fused=True)
        except EdgeCalibError as exc:  # no TensorRT here, or no engines built for this device
            if backend == "onnxruntime":  # the embedded default: a failure is the bundle's
                raise
            report.latency[backend] = {"skipped": str(exc)}
            log(f"{backend}: skipped ({exc})")
            continue
        with fused, open_engines(bundle, backend, threads=threads, fused=False) as separate:
            for batch in batches:
                x = np.random.default_rng(0).uniform(-1, 1, (batch, *bundle.spec.shape)) \
                    .astype(np.float32)
                configs = engine_configs(fused, separate, bundle, x)
                log(f"{backend} batch {batch}: {len(configs)} configurations x {iterations} "
                    "rounds")
                report.latency.setdefault(backend, {})[f"batch{batch}"] = latency_table(
                    configs, measure(configs, iterations, warmup), batch)
    with tempfile.TemporaryDirectory() as scratch:  # a generated video is not a result
        label = video
        if stream and video is None and data_root is not None:
            video = make_video(bundle, data_root, Path(scratch), stream_frames)
            label = "a generated video of the domains' test images, alternating"
        if stream and video is not None and bundle.manifest.domain_classifier is not None:
            log(f"stream through edge-calib run on {video}")
            report.stream = {**stream_benchmark(deploy, video, threads=threads), "video": label}
    write_json_atomic(out_dir / "report.json", report.to_dict())
    write_bytes_atomic(out_dir / "report.md", markdown(report).encode())
    try:
        from .plots import write_plots

        report.plots = write_plots(report, out_dir)
    except ImportError as exc:
        report.plots = f"skipped: {exc}"
    write_json_atomic(out_dir / "report.json", report.to_dict())
    return report


def _ms(v):
    return "-" if v is None else f"{v:.3f}"


def _pct(v):
    return "-" if v is None else f"{v:.1f}"


def markdown(report: BenchReport) -> str:
    env = report.environment
    lines = ["# edge-calib latency and overhead report", "",
             f"Bundle `{report.deploy}` (classifier {report.bundle['classifier_fingerprint']}, "
             f"{report.bundle['precision']}, sparsity {report.bundle['sparsity']}), "
             f"measured {report.created}.", "",
             f"Machine: {env['cpu']}, {env['cores']} cores ({env['affinity_cores']} usable), "
             f"{env['memory_gib']} GiB, {env['os']}, Python {env['python']}; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
             + (f"; GPU {env['gpu']}" if env.get("gpu") else "; no GPU") + ".", "",
             f"Command: `{report.command}`. Method: {report.method['warmup']} warm-up runs "
             f"per configuration, then {report.method['iterations']} interleaved rounds; "
             f"{report.method['statistic']}.", ""]
    for backend, per_batch in report.latency.items():
        if "skipped" in per_batch:
            lines += [f"## {backend}: skipped ({per_batch['skipped']})", ""]
            continue
        lines += [f"## Latency, {backend}" + (f" ({per_batch['device']})" if "device" in per_batch else ""), ""]
        for key, table in per_batch.items():
            if not key.startswith("batch"):
                continue
            lines += [f"Batch {table['batch']} (ms):", "",
                      "| configuration | min | mean | median | p90 | p95 | p99 | max | images/s |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, s in table["configs"].items():
                lines.append(f"| {name} | {_ms(s['min'])} | {_ms(s['mean'])} | {_ms(s['median'])} | "
                             f"{_ms(s['p90'])} | {_ms(s['p95'])} | {_ms(s['p99'])} | {_ms(s['max'])} | "
                             f"{s['throughput_ips']:.0f} |")
            lines += ["", "Calibrator overhead over the classifier alone (same run, paired):", "",
                      "| domain | two sessions, ms | % | fused graph, ms | % |", "|---|---|---|---|---|"]
            for domain, o in table["overhead"].items():
                chain, fused = o.get("chain", {}), o.get("fused", {})
                lines.append(f"| {domain} | {_ms(chain.get('ms'))} | {_pct(chain.get('pct'))} | "
                             f"{_ms(fused.get('ms'))} | {_pct(fused.get('pct'))} |")
            lines.append("")
    lines += ["## Static costs (batch 1, from the ONNX graphs)", "",
              "| part | parameters | MACs | weight bytes | activations (total / peak bytes) |",
              "|---|---|---|---|---|"]
    for name, c in report.static.items():
        lines.append(f"| {name} | {c['params']:,} | {c['macs']:,} | {c['weight_bytes']:,} | "
                     f"{c['activation_bytes_total']:,} / {c['activation_bytes_peak']:,} |")
    lines += ["", "Overhead ratios (the paper claims 5.8% of the DTN's parameters, 0.24% for "
                  "segmentation; parameters are not latency):", "",
              "| calibrator | params % of this classifier | MACs % | weight bytes % | "
              "params % of DTN | params % of LeNet |", "|---|---|---|---|---|---|"]
    for name, r in report.overhead_ratios.items():
        lines.append(f"| {name} | {r['params_pct_of_classifier']:.2f} | {r['macs_pct_of_classifier']:.2f} | "
                     f"{r['weight_bytes_pct_of_classifier']:.2f} | {r['params_pct_of_dtn']:.2f} | "
                     f"{r['params_pct_of_lenet']:.2f} |")
    lines += ["", "## Jetson projection (ESTIMATE from MACs and bytes, not a measurement)", "",
              "Roofline lower bounds in µs; real kernels on these boards are bound by launch "
              "overhead for a network this small.", "",
              "| device | peak | " + " | ".join(next(iter(report.jetson_projection_estimate.values()))["parts"]) + " |",
              "|---|---|" + "---|" * len(next(iter(report.jetson_projection_estimate.values()))["parts"])]
    for device, d in report.jetson_projection_estimate.items():
        peak = d["peak"]
        cells = [f"{p['bound_us']:.2f} ({p['bound_by']})" for p in d["parts"].values()]
        lines.append(f"| {device} | {peak['ops_per_s'] / 1e12:g} TOPS {peak['precision']}, "
                     f"{peak['bandwidth'] / 1e9:g} GB/s | " + " | ".join(cells) + " |")
    if report.stream is not None:
        s = report.stream
        lines += ["", "## Stream (`edge-calib run --domain auto --headless`)", "",
                  f"{s['frames']} frames of `{s['video']}`: {s['fps']:.1f} FPS end to end, "
                  f"{s['dropped']} dropped, {len(s['auto_switches'])} automatic switches. "
                  f"Switching on command (`domain NAME` on the control socket every "
                  f"{s['switching']['command_every_s']} s, the video paced at "
                  f"{s['switching']['paced_fps']:g} FPS like a camera): from the command's "
                  f"arrival to the first frame computed with the new calibrator, median "
                  f"{s['switching']['to_first_frame_ms'].get('median', float('nan')):.2f} ms, "
                  f"p99 {s['switching']['to_first_frame_ms'].get('p99', float('nan')):.2f} ms "
                  f"over {s['switching']['to_first_frame_ms'].get('count', 0)} switches; "
                  f"{s['switching']['dropped_during_switches']} frames dropped meanwhile.", "",
                  "| stage | mean | p50 | p95 | p99 |", "|---|---|---|---|---|"]
        for stage, st in s["stages_ms"].items():
            if st.get("count"):
                lines.append(f"| {stage} | {st['mean']:.3f} | {st['median']:.3f} | {st['p95']:.3f} | "
                             f"{st['p99']:.3f} |")
        if "where_time_goes" in s:
            shares = s["where_time_goes"]
            stages = ["capture", "pre", "network", "post", "total"]
            first = next(iter(shares.values()))
            lines += ["", f"Where the frame time goes (`run --domain {first['domain']} --headless`, "
                      f"ONNX Runtime {s.get('threads') or 'all'} thread(s); cast, normalisation "
                      "and ArgMax run inside the network graph; medians in ms):", "",
                      "| frames | " + " | ".join(stages) + " | outside the network | FPS |",
                      "|---|" + "---|" * (len(stages) + 2)]
            for scale, r in shares.items():
                cells = [f"{r['median_ms'].get(k, float('nan')):.2f}" for k in stages]
                lines.append(f"| {r['frame_size']} ({scale}) | " + " | ".join(cells) +
                             f" | {r['outside_network_pct']:.1f}% | {r['fps']:.1f} |")
    return "\n".join(lines) + "\n"
