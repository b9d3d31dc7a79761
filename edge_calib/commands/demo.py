"""``edge-calib demo``: the README's main job."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import data_root_option


@click.command()
@click.option("--work", type=click.Path(file_okay=False), default=".edge-calib-demo",
              show_default=True, help="Folder for everything the demo builds (reused on re-run).")
@data_root_option
@click.option("--target", default="mnist:colour", show_default=True,
              help="The new domain: mnist:colour (another camera's colour response), another "
                   "photometric shift (mnist:lowlight, mnist:haze, ...), or usps (other "
                   "handwriting: a shape shift, where a spatial calibrator is needed).")
@click.option("--calibrator-arch", "arch", default=None,
              help="Calibrator family [default: the toolkit's default].")
@click.option("--fast", is_flag=True, help="Smaller subsets and fewer epochs (about a minute).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(work, data_root, target, arch, fast, as_json, quiet):
    """Train, compress, calibrate, export and stream real digits end to end (MNIST -> another
    camera)."""
    from ..data import default_data_root
    from ..demo import DemoConfig, check_data, run_demo

    root = Path(data_root) if data_root else default_data_root()
    check_data(root, target)
    cfg = DemoConfig(Path(work), root, target=target, quiet=quiet)
    if arch:
        cfg.arch = arch
    if fast:  # the light calibrator's steps are cheap: enough of them to show its gain
        cfg.source_samples, cfg.target_samples = 3000, 2000
        cfg.classifier_epochs, cfg.calibrator_epochs, cfg.frames_per_segment = 1, 8, 40
    result = run_demo(cfg)
    if as_json:
        click.echo(json.dumps(result))
