"""``edge-calib build-engine``: bundle -> engines, on the device that runs them (no torch).

The old spelling ``build-engine --classifier ... --calibrator ... --out DIR`` (which exported
the bundle too) still works: it says once that this is now ``edge-calib export`` and does it.
"""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from ..core.errors import EdgeCalibError
from ..engines import BACKENDS
from .export import export_bundle
from .options import data_root_option


def _explicit(ctx, name) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


@click.command("build-engine")
@click.option("--deploy", type=click.Path(file_okay=False), default=None,
              help="The bundle to build engines for (from `edge-calib export`).")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="tensorrt",
              show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="[default: the bundle's: int8 for an INT8 classifier, else fp32; a profile "
                   "may set it]")
@click.option("--profile", default=None, help="Device build profile (a name, see "
                                              "edge_calib/profiles/, or a path to a JSON file).")
@click.option("--fused/--separate", default=None,
              help="TensorRT: one engine per domain, or a classifier engine plus one small "
                   "engine per calibrator [default: the profile's, else fused].")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=16), default=256,
              show_default=True, help="TensorRT memory-pool limit in MB.")
@click.option("--sparse/--dense", default=False, help="TensorRT: allow 2:4 sparse kernels.")
@click.option("--dla-core", type=int, default=None, help="TensorRT: run on this DLA core.")
@click.option("--force", is_flag=True, help="Rebuild engines that are already cached.")
# the old spelling, which also exported the bundle
@click.option("--classifier", type=click.Path(dir_okay=False), default=None, hidden=True)
@click.option("--calibrator", "calibrators", multiple=True, hidden=True)
@click.option("--auto-domain/--no-auto-domain", default=True, hidden=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, hidden=True)
@data_root_option
@click.option("--quiet", is_flag=True)
@click.pass_context
def build_engine(ctx, deploy, backend, precision, profile, fused, workspace_mb, sparse, dla_core,
                 force, classifier, calibrators, auto_domain, out, data_root, quiet):
    """Build the engines of a deploy bundle for this device (TensorRT), cached in the bundle."""
    settings = {"backend": backend, "precision": precision, "fused": fused,
                "workspace_mb": workspace_mb, "sparse": sparse, "dla_core": dla_core}
    if profile:
        from ..engines.profiles import load_profile

        prof = load_profile(profile)
        for key in settings:  # the profile fills what the command line left at its default
            if key in prof and not _explicit(ctx, key):
                settings[key] = prof[key]
        settings["batch"] = prof.get("batch")
    if settings["fused"] is None:
        settings["fused"] = True
    if classifier or calibrators or out:
        if deploy:
            raise EdgeCalibError("--deploy builds engines for an existing bundle; export a new one "
                                 "with `edge-calib export --classifier ... --out DIR`")
        if not (classifier and calibrators and out):
            raise EdgeCalibError("give --deploy DIR (or, to export a bundle, `edge-calib export "
                                 "--classifier ... --calibrator ... --out DIR`)")
        click.echo("note: exporting a bundle is now `edge-calib export`; `build-engine` builds "
                   "engines for it on the device", err=True)
        if settings["backend"] == "tensorrt" and _explicit(ctx, "backend"):
            from ..engines.tensorrt_backend import import_tensorrt

            import_tensorrt()  # fail before exporting anything
        bundle_precision = settings["precision"] if settings["precision"] != "fp16" else None
        summary = export_bundle(classifier, calibrators, bundle_precision, auto_domain, data_root,
                                out, force, quiet)
        if not (settings["backend"] == "tensorrt" and _explicit(ctx, "backend")):
            click.echo(json.dumps(summary))
            return
        deploy, force = out, True
    if not deploy:
        raise EdgeCalibError("give --deploy DIR: the bundle to build engines for")
    if settings["backend"] == "onnxruntime":
        from ..deploy.bundle import open_bundle

        open_bundle(deploy)  # checked; ONNX Runtime runs its graphs as they are
        click.echo(json.dumps({"deploy": deploy, "backend": "onnxruntime", "engines": None,
                               "note": "ONNX Runtime needs no engine build"}))
        return
    from ..engines.tensorrt_build import add_tensorrt_engines

    click.echo(json.dumps(add_tensorrt_engines(deploy, settings, force=force)))
