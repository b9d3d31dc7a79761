"""``edge-calib compress`` and ``edge-calib build-engine``."""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

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
                           "source_test": m.get("source_test"), "float_acc": m.get("float_acc"),
                           "compressed_acc": m.get("compressed_acc"),
                           "pruned_acc_before_finetune": m.get("pruned_acc_before_finetune")}))


def _explicit(ctx, name) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


@click.command("build-engine")
@click.option("--classifier", type=click.Path(dir_okay=False), default=None,
              help="Classifier checkpoint (workstation: exports a new bundle).")
@click.option("--calibrator", "calibrators", multiple=True,
              help="DOMAIN=CHECKPOINT or DOMAIN=identity; repeat per domain.")
@click.option("--deploy", type=click.Path(file_okay=False), default=None,
              help="An existing bundle to add TensorRT engines to (on the device).")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="[default: int8 for an INT8 classifier, else fp32; a profile may set it]")
@click.option("--profile", default=None, help="Device build profile (name in export/ or a path).")
@click.option("--fused/--separate", default=False,
              help="TensorRT: one engine per domain instead of classifier + calibrator engines.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=16), default=256,
              show_default=True, help="TensorRT memory-pool limit in MB.")
@click.option("--sparse/--dense", default=False, help="TensorRT: allow 2:4 sparse kernels.")
@click.option("--refit/--no-refit", default=False, help="TensorRT: build refittable engines.")
@click.option("--dla-core", type=int, default=None, help="TensorRT: run on this DLA core.")
@click.option("--auto-domain/--no-auto-domain", default=True, show_default=True,
              help="Train the small domain classifier used by `run --domain auto`.")
@data_root_option
@click.option("--out", type=click.Path(file_okay=False), default=None)
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--quiet", is_flag=True)
@click.pass_context
def build_engine(ctx, classifier, calibrators, deploy, backend, precision, profile, fused,
                 workspace_mb, sparse, refit, dla_core, auto_domain, data_root, out, force, quiet):
    """Export a deploy bundle (ONNX + manifest) and build engines for a backend."""
    settings = {"backend": backend, "precision": precision, "fused": fused,
                "workspace_mb": workspace_mb, "sparse": sparse, "dla_core": dla_core}
    if profile:
        from ..engines.profiles import load_profile

        prof = load_profile(profile)
        for key in settings:  # the profile fills what the command line left at its default
            if key in prof and not _explicit(ctx, key):
                settings[key] = prof[key]
        settings["batch"] = prof.get("batch")
    if deploy:
        if classifier or calibrators or out:
            raise EdgeCalibError("--deploy adds engines to an existing bundle; do not combine it "
                                 "with --classifier/--calibrator/--out")
        if settings["backend"] != "tensorrt":
            raise EdgeCalibError("--deploy is for building TensorRT engines on the device; "
                                 "ONNX Runtime needs no engine build")
        from ..engines.tensorrt_build import add_tensorrt_engines

        summary = add_tensorrt_engines(deploy, settings, force=force)
        click.echo(json.dumps(summary))
        return
    if not classifier or not out:
        raise EdgeCalibError("give --classifier, --calibrator DOMAIN=PATH ... and --out "
                             "(or --deploy DIR to add engines to a bundle)")
    from ..engines.tensorrt_backend import PRECISIONS
    from ..export.bundle_builder import build_bundle, parse_calibrator_args

    pairs = parse_calibrator_args(calibrators)
    if settings["backend"] == "tensorrt":
        from ..engines.tensorrt_backend import import_tensorrt

        import_tensorrt()  # fail before exporting anything
    prec = settings["precision"]
    if prec is None:
        from ..models.store import load_classifier

        c = load_classifier(classifier)
        prec = "int8" if (c.compression or {}).get("int8") else "fp32"
    if prec not in PRECISIONS:
        raise EdgeCalibError(f"unknown precision {prec!r}")
    if settings["backend"] == "onnxruntime" and prec == "fp16":
        raise EdgeCalibError("the onnxruntime backend runs fp32 or int8 on the CPU; fp16 is for "
                             "--backend tensorrt")
    domain_classifier = None
    if auto_domain and len(pairs) > 1:
        from ..export.domain_model import bundle_domain_classifier

        domain_classifier = bundle_domain_classifier(data_root)
    manifest = build_bundle(classifier, pairs, out, prec, force=force,
                            domain_classifier=domain_classifier, progress=not quiet)
    summary = {"out": out, "backend": settings["backend"], "precision": prec,
               "domains": list(manifest["domains"]), "files": len(manifest["files"]),
               "domain_classifier": manifest["domain_classifier"]}
    if settings["backend"] == "tensorrt":
        from ..engines.tensorrt_build import add_tensorrt_engines

        summary["engines"] = add_tensorrt_engines(out, settings | {"precision": prec}, force=True)
    click.echo(json.dumps(summary))
