"""``edge-calib compress``: prune and quantise a classifier into the model that is deployed, or
quantise a calibrator to INT8 the same way."""

from __future__ import annotations

import json

import click

from ..core.errors import EdgeCalibError
from .options import Real, data_root_option, hold_output


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--prune", default=None, help="2:4, or an unstructured sparsity such as 0.5.")
@click.option("--int8/--no-int8", default=False, help="INT8 post-training quantisation "
                                                      "(TensorRT conventions).")
@click.option("--calib-dataset", default=None,
              help="Images for INT8 scale estimation (quantization calibration data): source "
                   "images for a classifier; for a calibrator [default: its target domain].")
@click.option("--calib-batches", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--activation-range", type=click.Choice(["max", "percentile"]),
              default="percentile", show_default=True)
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Supervised fine-tuning on --calib-dataset with the pruning masks fixed.")
@click.option("--finetune-lr", type=Real(0, 10, low_open=True), default=1e-4, show_default=True)
@data_root_option
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--max-samples", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True)
def compress(checkpoint, prune, int8, calib_dataset, calib_batches, activation_range,
             finetune_epochs, finetune_lr, data_root, out, max_samples, seed, quiet):
    """Prune and/or quantise a classifier into the exact model that is deployed; quantise a
    calibrator checkpoint to INT8 (--int8 only)."""
    from ..compress.pipeline import compress_classifier
    from ..core.fileio import refuse_writing_over_inputs
    from ..data.catalog import has_test_split
    from ..models.checkpoint import check_replaceable, load_checkpoint
    from ..models.store import CALIBRATOR, CLASSIFIER, load_classifier
    from ..train.tensors import load_domain

    refuse_writing_over_inputs({"--out": out}, {"CHECKPOINT": checkpoint})
    hold_output(out)
    check_replaceable(out)
    meta, _ = load_checkpoint(checkpoint, (CLASSIFIER, CALIBRATOR))
    if "calibrator" in meta:
        if prune or finetune_epochs:
            raise EdgeCalibError(f"{checkpoint} is a calibrator: it can be quantised (--int8), "
                                 "not pruned or fine-tuned")
        if not int8:
            raise EdgeCalibError("nothing to do: give --int8 to quantise a calibrator")
        click.echo(json.dumps(compress_calibrator(checkpoint, calib_dataset, calib_batches,
                                                  activation_range, data_root, out,
                                                  max_samples, seed)))
        return
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


def compress_calibrator(checkpoint, calib_dataset, calib_batches, activation_range, data_root,
                        out, max_samples, seed) -> dict:
    from ..compress.calibrator import quantise_calibrator
    from ..models.store import load_calibrator, save_calibrator
    from ..train.tensors import load_domain

    cal = load_calibrator(checkpoint)
    dataset = calib_dataset or cal.meta.target
    if not dataset:
        raise EdgeCalibError(f"{checkpoint} records no target domain: give --calib-dataset")
    spec = cal.meta.input_spec
    calib = load_domain(dataset, "train", data_root, spec, max_samples, seed, unlabelled=True)
    quantised = quantise_calibrator(cal, calib, activation_range, calib_batches, seed=seed)
    saved = save_calibrator(out, quantised.module, quantised.meta)
    q = quantised.meta.quantization
    return {"out": out, "fingerprint": saved.fingerprint, "float_fingerprint": cal.fingerprint,
            "domain": cal.meta.domain, "compression": quantised.meta.compression,
            "calibration_dataset": dataset, "samples": q["samples"],
            "quantised_layers": q["quantised_layers"],
            "max_abs_change_on_calibration_images":
                round(q["max_abs_change_on_calibration_images"], 5)}
