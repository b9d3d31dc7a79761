"""``edge-calib export``: checkpoints -> deploy bundle (workstation side, needs torch)."""

from __future__ import annotations

import json

import click

from ..core.errors import EdgeCalibError
from .options import data_root_option


def export_options(f):
    for decorator in reversed([
        click.option("--classifier", required=True, type=click.Path(dir_okay=False),
                     help="Frozen classifier checkpoint (float or compressed)."),
        click.option("--calibrator", "calibrators", multiple=True,
                     help="DOMAIN=CHECKPOINT, DOMAIN=identity, or DOMAIN=histogram[:IMAGES] "
                          "(per-frame histogram matching to the classifier's recorded source "
                          "pixels, no training; IMAGES: the domain's frames, for the "
                          "auto-domain model); repeat per domain (the first is the default "
                          "domain)."),
        click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None,
                     help="[default: int8 for an INT8 classifier, else fp32]"),
        click.option("--auto-domain/--no-auto-domain", default=True, show_default=True,
                     help="Train the small domain classifier used by `run --domain auto`."),
        data_root_option,
        click.option("--out", required=True, type=click.Path(file_okay=False)),
        click.option("--force", is_flag=True, help="Replace an existing bundle (only once the "
                                                   "new one is complete)."),
        click.option("--quiet", is_flag=True),
    ]):
        f = decorator(f)
    return f


def export_bundle(classifier, calibrators, precision, auto_domain, data_root, out, force,
                  quiet) -> dict:
    from ..export.bundle_builder import build_bundle, parse_calibrator_args
    from ..models.store import load_classifier

    pairs = parse_calibrator_args(calibrators)
    if precision is None:
        c = load_classifier(classifier)
        precision = "int8" if c.int8 else "fp32"
    domain_classifier = None
    if auto_domain:
        from ..export.domain_model import bundle_domain_classifier

        domain_classifier = bundle_domain_classifier(data_root)
    manifest = build_bundle(classifier, pairs, out, precision, force=force,
                            domain_classifier=domain_classifier, progress=not quiet,
                            data_root=data_root)
    return {"out": out, "task": manifest.task, "precision": precision,
            "domains": list(manifest.domains), "files": len(manifest.files),
            "domain_classifier_holdout_accuracy": None if manifest.domain_classifier is None
            else manifest.domain_classifier.holdout_accuracy}


@click.command("export")
@export_options
def export(classifier, calibrators, precision, auto_domain, data_root, out, force, quiet):
    """Export a deploy bundle: ONNX graphs (classifier, calibrators, fused), manifest, hashes."""
    if not calibrators:
        raise EdgeCalibError("give at least one --calibrator DOMAIN=PATH (or DOMAIN=identity)")
    click.echo(json.dumps(export_bundle(classifier, calibrators, precision, auto_domain,
                                        data_root, out, force, quiet)))
