"""``edge-calib demo``: the README's main job."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import data_root_option

FAST_CAMVID = (6, 0.5, 10)  # segmenter epochs, its training scale, calibrator epochs


@click.command()
@click.argument("scenario", type=click.Choice(["digits", "camvid"]), default="digits",
                required=False)
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Folder for everything the demo builds, reused on re-run "
                   "[default: .edge-calib-demo, or .edge-calib-demo-camvid].")
@data_root_option
@click.option("--target", default="mnist:colour", show_default=True,
              help="digits: the new domain: mnist:colour (another camera's colour response), "
                   "another photometric shift (mnist:lowlight, mnist:haze, ...), or usps (other "
                   "handwriting: a shape shift, where a spatial calibrator is needed).")
@click.option("--calibrator-arch", "arch", default=None,
              help="Calibrator family [default: the toolkit's default].")
@click.option("--fast", is_flag=True, help="Smaller subsets and fewer epochs (a few minutes).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(scenario, work, data_root, target, arch, fast, as_json, quiet):
    """Train, compress, calibrate, export and stream end to end: real digits (MNIST -> another
    camera), or `demo camvid`: real road frames, day -> dusk."""
    from ..data import default_data_root

    root = Path(data_root) if data_root else default_data_root()
    if scenario == "camvid":
        result = camvid_demo(Path(work or ".edge-calib-demo-camvid"), root, arch, fast, quiet)
    else:
        result = digits_demo(Path(work or ".edge-calib-demo"), root, target, arch, fast, quiet)
    if as_json:
        click.echo(json.dumps(result))


def camvid_demo(work: Path, root: Path, arch, fast: bool, quiet: bool) -> dict:
    from ..core.errors import EdgeCalibError
    from ..data import load_dataset
    from ..demos.camvid import CamvidDemoConfig, run_camvid_demo

    try:
        load_dataset("camvid:dusk", "test", root)
    except EdgeCalibError as exc:
        raise EdgeCalibError(f"demo camvid needs CamVid: {exc}") from None
    cfg = CamvidDemoConfig(work, root, quiet=quiet)
    if arch:
        cfg.arch = arch
    if fast:
        cfg.segmenter_epochs, cfg.train_scale, cfg.calibrator_epochs = FAST_CAMVID
    return run_camvid_demo(cfg)


def digits_demo(work: Path, root: Path, target: str, arch, fast: bool, quiet: bool) -> dict:
    from ..demos.digits import DemoConfig, check_data, run_demo

    check_data(root, target)
    cfg = DemoConfig(work, root, target=target, quiet=quiet)
    if arch:
        cfg.arch = arch
    if fast:  # the light calibrator's steps are cheap: enough of them to show its gain
        cfg.source_samples, cfg.target_samples = 3000, 2000
        cfg.classifier_epochs, cfg.calibrator_epochs, cfg.frames_per_segment = 1, 8, 40
    return run_demo(cfg)
