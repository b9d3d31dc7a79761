"""``edge-calib data``: fetch and inspect datasets."""

from __future__ import annotations

import json

import click

from .options import data_root_option


@click.group()
def data():
    """Download and inspect datasets (MNIST, USPS, SVHN, CamVid)."""


@data.command()
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder [default: $EDGE_CALIB_DATA, else the user cache].")
@click.option("--variant", default=None, help="Published form (usps: esl or libsvm).")
@click.option("--mirror", default=None, help="Base URL to fetch the files from instead of the "
                                             "canonical mirrors.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fetch(name, root, variant, mirror, quiet):
    """Download NAME's canonical files, verify their checksums (resumes partial downloads)."""
    from ..data import default_data_root, fetch_dataset

    root = root or default_data_root()
    for path in fetch_dataset(name, root, variant, mirror, progress=not quiet):
        click.echo(f"ok {path}")


@data.command()
@click.argument("name")
@data_root_option
def info(name, data_root):
    """Split sizes, image shapes and class counts (pixel counts for segmentation masks) of a
    dataset or image folder."""
    import numpy as np

    from ..data import load_dataset

    out = {}
    for split in ("train", "test"):
        ds = load_dataset(name, split, data_root)
        out[split] = {"n": len(ds), "shape": list(ds.images.shape[1:])}
        if ds.labels is None:
            out[split]["class_counts"] = None
        elif ds.labels.ndim == 1:
            out[split]["class_counts"] = np.bincount(ds.labels).tolist()
        else:  # segmentation masks: labelled pixels per class, and the void ones
            void = len(ds.classes or ()) if ds.void is None else ds.void
            counts = np.bincount(ds.labels.ravel(), minlength=void + 1)
            names = ds.classes or [str(k) for k in range(void)]
            out[split]["pixel_counts"] = {names[k]: int(counts[k]) for k in range(void)}
            out[split]["void_pixels"] = int(counts[void:].sum())
    click.echo(json.dumps({"dataset": name, **out}, indent=2))
