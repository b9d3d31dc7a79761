"""``edge-calib run``: the camera-stream runtime (device side: never imports torch)."""

from __future__ import annotations

import json
import sys

import click

from ..core.errors import EdgeCalibError
from ..engines import BACKENDS
from .options import Real


@click.command()
@click.option("--deploy", required=True, type=click.Path(file_okay=False),
              help="Deploy bundle (from `edge-calib export`; on a TensorRT device, after "
                   "`edge-calib build-engine --deploy`).")
@click.option("--camera", type=click.IntRange(0, 1023), default=None, help="OpenCV camera index.")
@click.option("--input", "uri", default=None,
              help="/dev/videoN, v4l2:///dev/videoN, csi://N, a video file, an image folder, "
                   "rtsp:// or http:// stream, or a GStreamer pipeline.")
@click.option("--domain", required=True, help="Domain to start with, or auto.")
@click.option("--auto-radius-scale", type=Real(0.1, 1e6), default=1.0, show_default=True,
              help="With --domain auto: multiply every domain's open-set radius (above 1 fewer "
                   "frames are unknown; a very large value is closed-set).")
@click.option("--unknown", "unknown_rule", type=click.Choice(["model", "histogram"]),
              default="model", show_default=True,
              help="With --domain auto, what runs for frames of an unknown domain: the frozen "
                   "model alone, or the frozen model after per-frame histogram matching to the "
                   "source pixels the bundle records (no training).")
@click.option("--collect", "collect_dir", type=click.Path(file_okay=False), default=None,
              help="Keep sampled frames of every stretch --domain auto calls unknown in "
                   "DIR/unknown-TIME/ (and on the control commands collect NAME, collect stop), "
                   "for edge-calib adapt.")
@click.option("--collect-max", type=click.IntRange(1, 10**7), default=2000, show_default=True,
              help="Frames per collection.")
@click.option("--collect-budget", type=Real(0.001, 10**7), default=1024.0, show_default=True,
              help="Megabytes all of the run's collections may write.")
@click.option("--collect-rate", type=Real(0, 1000), default=2.0, show_default=True,
              help="Frames a second kept at most (0: every frame that is not a near-duplicate).")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="onnxruntime",
              show_default=True)
@click.option("--headless", is_flag=True, help="No window.")
@click.option("--output", "outputs", multiple=True,
              help="Write the annotated video here (.mp4, .avi), or serve it live at "
                   "http://HOST:PORT (a page at /, MJPEG at /stream.mjpg); repeatable.")
@click.option("--predictions", default=None, help="One JSON line per frame.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at exit.")
@click.option("--control", default=None, help="UNIX socket path (or - for stdin) for line "
                                              "commands: domain NAME, status, reload, collect "
                                              "NAME, collect stop, quit.")
@click.option("--watch", is_flag=True, help="Reload when the bundle changes on disk.")
@click.option("--input-width", type=click.IntRange(1, 16384), default=None)
@click.option("--input-height", type=click.IntRange(1, 16384), default=None)
@click.option("--fps", type=Real(0.01, 1000), default=None,
              help="Camera rate, or the pace of --realtime (0.01 to 1000 frames a second).")
@click.option("--loop", is_flag=True, help="Loop files and folders.")
@click.option("--realtime", is_flag=True,
              help="Treat a file like a live camera: paced at --fps, oldest frames dropped "
                   "when processing falls behind.")
@click.option("--queue", "queue_size", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option("--reconnect-timeout", type=Real(0, 86400), default=10.0, show_default=True,
              help="Seconds to keep reconnecting to a live source that stopped.")
@click.option("--max-frames", type=click.IntRange(1, 2**62), default=None)
@click.option("--threads", type=click.IntRange(0, 1024), default=0,
              help="ONNX Runtime intra-op threads (0: its default).")
@click.option("--separate", is_flag=True,
              help="Run each domain's calibrator and the classifier as two graphs (timed "
                   "apart) instead of the fused graph.")
@click.option("--verbose", is_flag=True, help="Print the timing report every few seconds.")
def run(deploy, camera, uri, domain, auto_radius_scale, unknown_rule, collect_dir, collect_max,
        collect_budget, collect_rate, backend, headless, outputs, predictions,
        as_json, control, watch, input_width, input_height, fps, loop, realtime, queue_size, reconnect_timeout,
        max_frames, threads, separate, verbose):
    """Run the camera stream through the current domain's calibrator and the classifier."""
    from ..runtime.sources import parse_source
    from ..runtime.stream import RunOptions, StreamRunner

    if unknown_rule != "model" and domain != "auto":
        raise click.UsageError("--unknown applies to frames --domain auto calls unknown; "
                               "add --domain auto")
    from ..core.fileio import refuse_writing_over_inputs

    for option, path in [*(("--output", o) for o in outputs), ("--predictions", predictions)]:
        refuse_writing_over_inputs({option: path}, {"--input": uri})
    source = parse_source(camera, uri, input_width, input_height, fps, loop)
    options = RunOptions(deploy=deploy, domain=domain, auto_radius_scale=auto_radius_scale,
                         unknown=unknown_rule, collect=collect_dir, collect_max=collect_max,
                         collect_budget_mb=collect_budget, collect_rate=collect_rate,
                         backend=backend, headless=headless,
                         outputs=outputs, predictions=predictions, control=control, watch=watch,
                         verbose=verbose, queue_size=queue_size,
                         reconnect_timeout=reconnect_timeout, realtime=realtime,
                         max_frames=max_frames, threads=threads, separate=separate)
    runner = StreamRunner(options, source)
    summary = runner.run()
    click.echo(runner.times.report(runner.counters_text()), err=True)
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    if summary.error:
        kept = summary.partial_outputs
        click.echo(f"error: {summary.error}" + (f" (the frames before it: {', '.join(kept)}; "
                                                 f"previous outputs left as they were)"
                                                 if kept else ""), err=True)
        sys.exit(1)
    if summary.frames == 0:
        raise EdgeCalibError(f"{source.describe()} delivered no frames")
