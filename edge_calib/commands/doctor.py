"""``edge-calib doctor``: the board self-check (device side, no torch)."""

from __future__ import annotations

import json
import sys

import click


@click.command()
@click.option("--deploy", type=click.Path(file_okay=False), default=None,
              help="A bundle to check, run through every backend here and time.")
@click.option("--report", "report_dir", default="doctor-report", show_default=True,
              type=click.Path(file_okay=False), help="Folder for doctor.json and doctor.md.")
@click.option("--profile", default=None, help="Build profile for the TensorRT engines.")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
def doctor(deploy, report_dir, profile, iterations):
    """Check this machine and a bundle: versions, then every backend that runs here (TensorRT
    builds its engines first) timed and compared with ONNX Runtime."""
    from ..bench.doctor import run_doctor

    settings = {"fused": True}
    if profile:
        from ..engines.profiles import load_profile

        prof = load_profile(profile)
        settings.update({k: prof[k] for k in ("precision", "fused", "sparse", "dla_core", "batch",
                                              "workspace_mb") if k in prof})
    report = run_doctor(deploy, report_dir, settings, iterations)
    click.echo(open(f"{report_dir}/doctor.md").read())
    click.echo(json.dumps({"ok": report["ok"], "report": report_dir,
                           "problems": report["problems"]}))
    if not report["ok"]:
        sys.exit(1)
