"""``edge-calib bench``: latency and overhead report of a deploy bundle."""

from __future__ import annotations

import json

import click

from .options import data_root_option


@click.command()
@click.option("--deploy", required=True, type=click.Path(file_okay=False))
@click.option("--report", "report_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for report.json, report.md and the PNG plots.")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 16),
              show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="ONNX Runtime intra-op threads (0: its default).")
@click.option("--video", default=None, help="Video for the stream FPS (else one is generated "
                                            "from the domains' test images).")
@click.option("--stream-frames", type=click.IntRange(min=10), default=600, show_default=True)
@click.option("--stream/--no-stream", default=True, help="Also measure the stream and switches.")
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary at the end.")
@data_root_option
def bench(deploy, report_dir, batches, iterations, warmup, threads, video, stream_frames,
          stream, as_json, data_root):
    """Measure a bundle: latency (trtexec-style, interleaved), MACs, bytes, overhead."""
    from ..bench.report import run_bench
    from ..data import default_data_root

    report = run_bench(deploy, report_dir, tuple(batches), iterations, warmup, threads, video,
                       data_root or default_data_root(), stream_frames, stream,
                       log=lambda m: click.echo(m, err=True))
    plots = report.plots
    click.echo(f"wrote {report_dir}/report.json, report.md"
               + (f", {', '.join(plots)}" if isinstance(plots, list) and plots else
                  f" (plots {plots})" if plots else ""), err=True)
    if as_json:
        ort = report.latency["onnxruntime"]
        click.echo(json.dumps({"report": report_dir, "static": report.static,
                               "overhead_ratios": report.overhead_ratios,
                               "onnxruntime": {b: {"medians_ms": {k: v["median"] for k, v in t["configs"].items()},
                                                   "overhead": t["overhead"]} for b, t in ort.items()}}))
    else:
        click.echo(open(f"{report_dir}/report.md").read())
