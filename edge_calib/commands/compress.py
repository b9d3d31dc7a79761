"""``edge-calib compress``: prune and quantise a classifier into the model that is deployed."""

from __future__ import annotations

import json

import click

from ..errors import EdgeCalibError
from .options import data_root_option


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--prune", default=None, help="2:4, or an unstructured sparsity such as 0.5.")
@click.option("--int8/--no-int8", default=False, help="INT8 post-training quantisation "
                                                      "(TensorRT conventions).")
@click.option("--calib-dataset", default=None,
              help="Source-domain images for INT8 scale estimation (quantization calibration "
                   "data; unrelated to our calibrators).")
@click.option("--calib-batches", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--activation-range", type=click.Choice(["max", "percentile"]),
              default="percentile", show_default=True)
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Supervised fine-tuning on --calib-dataset with the pruning masks fixed.")
@click.option("--finetune-lr", type=float, default=1e-4, show_default=True)
@data_root_option
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--max-samples", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True)
def compress(checkpoint, prune, int8, calib_dataset, calib_batches, activation_range,
             finetune_epochs, finetune_lr, data_root, out, max_samples, seed, quiet):
    """Prune and/or quantise a classifier into the exact model that is deployed."""
    from ..compress.pipeline import compress_classifier
    from ..data.catalog import has_test_split
    from ..models.store import load_classifier
    from ..train.tensors import load_domain

    clf = load_classifier(checkpoint)
    if clf.onnx_bytes is not None:
        raise EdgeCalibError(f"{checkpoint} is an imported model: it is deployed as given; "
                             "compress it before exporting it to ONNX (Q/DQ INT8 graphs import "
                             "as they are)")
    if clf.compression:
        raise EdgeCalibError(f"{checkpoint} is already compressed; compress the float checkpoint")
    if not prune and not int8:
        raise EdgeCalibError("nothing to do: give --prune and/or --int8")
    if (int8 or finetune_epochs) and not calib_dataset:
        raise EdgeCalibError("--int8 and --finetune-epochs need --calib-dataset (source images)")
    calib = test = None
    if calib_dataset:
        calib = load_domain(calib_dataset, "train", data_root, clf.spec, max_samples, seed)
        if has_test_split(calib_dataset):
            test = load_domain(calib_dataset, "test", data_root, clf.spec, max_samples, seed)
    compressed = compress_classifier(clf, prune, int8, calib, test=test, finetune=calib,
                                     finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                                     act_method=activation_range, calib_batches=calib_batches,
                                     seed=seed, progress=not quiet)
    fingerprint = compressed.save(out)
    m = compressed.metrics
    click.echo(json.dumps({"out": out, "fingerprint": fingerprint,
                           "source_fingerprint": clf.fingerprint,
                           "compression": compressed.compression,
                           "source_test": m.get("source_test"),
                           **{k: v for k, v in m.items()
                              if k.split("_")[0] in ("float", "compressed", "pruned")}}))
