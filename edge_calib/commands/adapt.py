"""``edge-calib adapt``: add a domain to a deploy bundle from frames collected on the device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..models.families import FAMILY_SUMMARIES
from ..train.recipes import recipe

STATISTICS = recipe("statistics")  # adapt trains with the statistics recipe by default


@click.command("adapt")
@click.option("--deploy", required=True, type=click.Path(file_okay=False),
              help="The bundle to add the domain to (changed in place, atomically).")
@click.option("--frames", required=True, type=click.Path(file_okay=False),
              help="The new domain's unlabelled frames: a collection from `run --collect`, or "
                   "any folder of images.")
@click.option("--domain", required=True, help="The new domain's name.")
@click.option("--replace", is_flag=True, help="Train a domain the bundle already has again.")
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="[default: 8 for a segmenter, 32 for a classifier: a collection of a few "
                   "hundred frames still gives several steps an epoch]")
@click.option("--calibrator-arch", "arch", default=STATISTICS["arch"], show_default=True,
              help="Calibrator family: " + "; ".join(FAMILY_SUMMARIES))
@click.option("--calibrator-size", "size", default=STATISTICS["size"], show_default=True,
              help="The family's size: a preset or KEY=VALUE,... (as `train`).")
@click.option("--eps", type=float, default=STATISTICS["eps"], show_default=True)
@click.option("--lr", type=float, default=STATISTICS["lr"], show_default=True)
@click.option("--ema", type=float, default=STATISTICS["ema"], show_default=True)
@click.option("--w-stats", type=float, default=STATISTICS["w_stats"], show_default=True,
              help="Weight of the source-statistics term.")
@click.option("--w-consistency", type=float, default=STATISTICS["w_consistency"],
              show_default=True,
              help="Weight of the source consistency term (on the bundle's source frames).")
@click.option("--w-histogram", type=float, default=STATISTICS["w_histogram"],
              show_default=True,
              help="Weight of the pixel histogram term (towards the bundle's source frames).")
@click.option("--init", type=click.Choice(["identity", "histogram"]), default="identity",
              show_default=True,
              help="Where the curve calibrator starts: the identity, or per-frame histogram "
                   "matching to the source pixels.")
@click.option("--restarts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Short starts from different seeds; the lowest statistics distance "
                   "continues (3/16 of --epochs each).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def adapt(deploy, frames, domain, replace, epochs, batch_size, arch, size, eps, lr, ema, w_stats,
          w_consistency, w_histogram, init, restarts, seed, device, quiet):
    """Train a calibrator for a new domain from its unlabelled frames against the bundle's own
    frozen model, keep it or per-frame histogram matching (whichever restores the model's source
    statistics better on held-out frames), and add it to the bundle: the other domains' files
    are untouched, the auto-domain model learns the new domain, and the manifest is swapped
    atomically (a device running with --watch picks it up)."""
    from ..deploy.bundle import open_bundle
    from ..export.adapt import AdaptRequest, adapt_bundle
    from ..train.calibrate import CalibratorConfig
    from .training import calibrator_size

    if batch_size is None:
        batch_size = 8 if open_bundle(deploy, verify=False).task == "segmentation" else 32
    cfg = CalibratorConfig(epochs=epochs, batch_size=batch_size, lr=lr, eps=eps, arch=arch,
                           size=calibrator_size(arch, size, None, None),
                           objective=STATISTICS["objective"],
                           w_stats=w_stats, w_consistency=w_consistency,
                           w_histogram=w_histogram, ema=ema, init=init, seed=seed,
                           restarts=restarts,
                           restart_epochs=max(1, epochs * 3 // 16) if restarts > 1 else 0)
    cfg.validate()
    result = adapt_bundle(AdaptRequest(Path(deploy), Path(frames), domain, cfg, replace, device,
                                       progress=not quiet))
    click.echo(json.dumps(result))
