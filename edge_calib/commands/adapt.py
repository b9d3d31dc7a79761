"""``edge-calib adapt``: add a domain to a deploy bundle from frames collected on the device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..train.recipes import recipe
from .options import calibrator_options

STATISTICS = recipe("statistics")  # adapt trains with the statistics recipe by default
SIZE = STATISTICS.pop("size")  # --calibrator-size, parsed by the family
OBJECTIVE = STATISTICS.pop("objective")  # the statistics objective, not an option of adapt


@click.command("adapt")
@click.option("--deploy", required=True, type=click.Path(file_okay=False),
              help="The bundle to add the domain to (changed in place, atomically).")
@click.option("--frames", required=True, type=click.Path(file_okay=False),
              help="The new domain's unlabelled frames: a collection from `run --collect`, or "
                   "any folder of images.")
@click.option("--domain", required=True, help="The new domain's name.")
@click.option("--replace", is_flag=True, help="Train a domain the bundle already has again.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="[default: 8 for a segmenter, 32 for a classifier: a collection of a few "
                   "hundred frames still gives several steps an epoch]")
@calibrator_options(
    only=("epochs", "arch", "eps", "lr", "ema", "w_stats", "w_consistency", "w_histogram",
          "init", "restarts"),
    defaults={"epochs": 40, "restarts": 3, **STATISTICS},
    helps={"w_consistency": "Weight of the source consistency term (on the bundle's source "
                            "frames).",
           "w_histogram": "Weight of the pixel histogram term (towards the bundle's source "
                          "frames).",
           "restarts": "Short starts from different seeds; the lowest statistics distance "
                       "continues (3/16 of --epochs each)."})
@click.option("--calibrator-size", "size", default=SIZE, show_default=True,
              help="The family's size: a preset or KEY=VALUE,... (as `train`).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def adapt(deploy, frames, domain, replace, batch_size, size, seed, device, quiet, **settings):
    """Train a calibrator for a new domain from its unlabelled frames against the bundle's own
    frozen model, keep it or per-frame histogram matching (whichever restores the model's source
    statistics better on held-out frames), and add it to the bundle: the other domains' files
    are untouched, the auto-domain model learns the new domain, and the manifest is swapped
    atomically (a device running with --watch picks it up)."""
    from ..deploy.bundle import open_bundle
    from ..export.adapt import AdaptRequest, adapt_bundle
    from ..train.settings import CalibratorConfig
    from .training import calibrator_size

    if batch_size is None:
        batch_size = 8 if open_bundle(deploy, verify=False).task == "segmentation" else 32
    epochs, restarts = settings["epochs"], settings["restarts"]
    cfg = CalibratorConfig(**settings, batch_size=batch_size, seed=seed,
                           size=calibrator_size(settings["arch"], size, None, None),
                           objective=OBJECTIVE,
                           restart_epochs=max(1, epochs * 3 // 16) if restarts > 1 else 0)
    cfg.validate()
    result = adapt_bundle(AdaptRequest(Path(deploy), Path(frames), domain, cfg, replace, device,
                                       progress=not quiet))
    click.echo(json.dumps(result))
