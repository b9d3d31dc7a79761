"""``edge-calib train-classifier``, ``train`` and ``eval``."""

from __future__ import annotations

import dataclasses
import json

import click

from ..core.augmentations import AUGMENTATIONS, GEOMETRIC_HELP, PHOTOMETRIC_HELP
from ..core.errors import EdgeCalibError
from ..core.limits import check_input_pixels
from ..core.progress import echo_err
from ..train import recipes
from ..train.recipes import RECIPES
from ..train.settings import SIZE_HELP
from .options import (
    calibrator_options,
    data_root_option,
    hold_output,
    left_at_default,
    training_options,
)


def parse_hw(text: str | None, option: str = "--train-size") -> tuple[int, int] | None:
    """``180x240`` -> (180, 240): height x width, within $EDGE_CALIB_MAX_INPUT_PIXELS."""
    if text is None:
        return None
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise EdgeCalibError(f"{option} {text!r}: use HEIGHTxWIDTH, e.g. 180x240")
    check_input_pixels(int(h), int(w), f"{option} {text}")
    return int(h), int(w)


def calibrator_size(arch: str, size: str | None, width: int | None, blocks: int | None) -> dict:
    """The size settings from --calibrator-size, with the resnet shortcuts --width/--blocks."""
    from ..models.calibrators import parse_size

    settings = parse_size(arch, size)
    shortcuts = {k: v for k, v in (("width", width), ("blocks", blocks)) if v is not None}
    if shortcuts and arch != "resnet":
        raise EdgeCalibError(f"--{'/--'.join(shortcuts)} set the resnet calibrator's size; for "
                             f"{arch!r} use --calibrator-size")
    return parse_size(arch, ",".join(f"{k}={v}" for k, v in (settings | shortcuts).items()))


@click.command("train-classifier")
@click.option("--dataset", required=True,
              help="Labelled source: mnist, usps, svhn, camvid:day (masks) or a folder.")
@click.option("--arch", default="dtn", show_default=True,
              help="dtn or lenet (classifiers), lraspp_small (segmenter).")
@data_root_option
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--augment", type=click.Choice(AUGMENTATIONS), default="none", show_default=True,
              help="geometric (classifiers): " + GEOMETRIC_HELP + "; photometric, per image: " + PHOTOMETRIC_HELP + "; both. "
                   "Segmenters always train on scaled crops and flips and take none or "
                   "photometric.")
@click.option("--input-size", default=None, metavar="HxW",
              help="Segmenters: the network's input size [default: the architecture's, "
                   "180x240 for lraspp_small].")
@click.option("--crop", default=None, metavar="HxW",
              help="Segmenters: the size of the random training crops [default: about 98% x "
                   "93% of the input size].")
@click.option("--train-scale", type=click.FloatRange(0.1, 2.0), default=1.0, show_default=True,
              help="Segmenters: train on random crops of the input-size frames scaled by about "
                   "this factor (masks are scored at their full resolution).")
@click.option("--resume", is_flag=True, help="Continue from the saved training state.")
@click.option("--force", is_flag=True, help="Discard an existing training state.")
@training_options
def train_classifier(dataset, arch, data_root, out, epochs, lr, augment, input_size, crop,
                     train_scale, resume, force, batch_size, seed, device, max_samples, quiet):
    """Train the frozen source model (classifier or segmenter); the checkpoint holds weights,
    architecture, input spec and labels. Resumable: the state is saved after every epoch."""
    from ..models.checkpoint import check_replaceable
    from ..models.classifiers import default_input_spec, task_of
    from ..train.augment import augmentation
    from ..train.distributed import Distributed
    from ..train.loop import check_states, state_paths
    from ..train.tensors import resolve_device

    spec = default_input_spec(arch)
    augmentation(augment, spec, task_of(arch))  # a segmenter refuses geometric before loading
    if input_size:
        if task_of(arch) != "segmentation":
            raise EdgeCalibError(f"--input-size: {arch} is a classifier with a fixed input "
                                 f"({spec.height}x{spec.width})")
        h, w = parse_hw(input_size, "--input-size")
        spec = dataclasses.replace(spec, height=h, width=w)
    crop = parse_hw(crop, "--crop")
    if crop and not (crop[0] <= spec.height and crop[1] <= spec.width):
        raise EdgeCalibError(f"--crop {crop[0]}x{crop[1]} is larger than the input "
                             f"{spec.height}x{spec.width}")
    state = state_paths(out)[0]
    check_states([state], resume, force)
    check_replaceable(out)
    dist, dev = Distributed.from_environment(resolve_device(device))
    try:
        if dist.is_main:  # the one writer: a second process writing the same --out is refused
            hold_output(out)
        dist.per_rank(batch_size)
        clf = _train_source_model(dataset, arch, spec, data_root, epochs, lr, augment, crop,
                                  train_scale, resume, state, batch_size, seed, dev,
                                  max_samples, quiet, dist)
        dist.close()
        if not dist.is_main:
            return
        fingerprint = clf.save(out)
        state.unlink(missing_ok=True)
    except BaseException:
        dist.close(finished=False)
        raise
    m = clf.metrics
    click.echo(json.dumps({"out": out, "arch": arch, "task": m["task"],
                           "fingerprint": fingerprint, "params": clf.params,
                           "world_size": dist.world_size,
                           **{k: m.get(k) for k in ("val_acc", "source_test_acc", "val_miou",
                                                    "source_test_miou") if k in m}}))


def _train_source_model(dataset, arch, spec, data_root, epochs, lr, augment, crop, train_scale,
                        resume, state, batch_size, seed, dev, max_samples, quiet, dist):
    """Load the labelled splits and train (``train_classifier``); None on ranks other than 0."""
    from ..data.catalog import has_test_split, has_val_split
    from ..train.classifier import train_classifier as fit
    from ..train.distributed import stop_on_signals
    from ..train.loop import kept_message
    from ..train.tensors import load_domain

    train = load_domain(dataset, "train", data_root, spec, max_samples, seed)
    if train.labels is None:
        raise EdgeCalibError(f"{dataset}: training a classifier needs labelled images "
                             "(class-index subfolders)")
    val = load_domain(dataset, "val", data_root, spec) if has_val_split(dataset) else None
    test = load_domain(dataset, "test", data_root, spec) if has_test_split(dataset) else None
    with stop_on_signals(lambda: kept_message(state)):
        return fit(arch, spec, train, test, epochs, batch_size, lr, seed, dev, augment,
                   progress=not quiet and dist.is_main, val=val, state_path=state,
                   resume=resume, train_scale=train_scale, crop=crop, dist=dist,
                   cap_batch=left_at_default("batch_size"))


@click.command()
@click.option("--classifier", required=True, type=click.Path(dir_okay=False),
              help="Frozen classifier checkpoint (float or compressed).")
@click.option("--source", required=True, help="Source domain images (labels unused).")
@click.option("--target", required=True, multiple=True,
              help="Target domain: a dataset or a folder of unlabelled images. Repeat it (with "
                   "one --domain each) to train one calibrator per domain in one job.")
@data_root_option
@click.option("--domain", required=True, multiple=True,
              help="Name of the target domain (e.g. city, night); one per --target, in order.")
@click.option("--out", required=True, type=click.Path(),
              help="The calibrator checkpoint; with several domains a folder that receives "
                   "DOMAIN.calib.pt for each.")
@calibrator_options()
@click.option("--calibrator-size", "size", default=None, help=SIZE_HELP)
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="resnet only: same as --calibrator-size width=N.")
@click.option("--blocks", type=click.IntRange(min=0), default=None,
              help="resnet only: same as --calibrator-size blocks=N.")
@click.option("--train-size", default=None, metavar="HxW",
              help="Train on the images resized to HxW (e.g. 180x240 for 480x360 frames: "
                   "four times cheaper); the calibrator is deployed at the model's input size.")
@click.option("--monitor-test/--no-monitor-test", default=False,
              help="Log target test accuracy per epoch (curves only, never used to select).")
@click.option("--restart-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of each start before the choice [default: a fifth of --epochs].")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=None,
              help="Named settings that go together; any option you give overrides the "
                   "recipe's. statistics: " + ", ".join(f"{k}={v}" for k, v in
                                                         RECIPES["statistics"].items())
                   + " (the CamVid dusk recipe).")
@click.option("--resume", is_flag=True, help="Continue from the saved training state.")
@click.option("--force", is_flag=True, help="Discard an existing training state.")
@training_options
def train(classifier, source, target, data_root, domain, out, size, width, blocks, train_size,
          monitor_test, restart_epochs, recipe, resume, force, batch_size, seed, device,
          max_samples, quiet, **settings):
    """Train a data calibrator for DOMAIN against a frozen classifier; with several
    --target/--domain pairs, one per domain (written to OUT/DOMAIN.calib.pt). Under torchrun
    (--nproc-per-node N --no-python edge-calib train ...) one domain's batches are split over
    the processes, several domains are dealt to them."""
    from ..data.catalog import has_test_split, has_val_split
    from ..models.store import load_classifier
    from ..train.distributed import Distributed
    from ..train.evaluate import check_task
    from ..train.jobs import SharedInputs, check_states, plan, train_domains
    from ..train.settings import CalibratorConfig
    from ..train.tensors import load_domain, resolve_device

    from ..core.fileio import refuse_writing_over_inputs
    from ..models.checkpoint import check_replaceable

    tasks = plan(target, domain, out)
    for task in tasks:
        refuse_writing_over_inputs({"--out": task.out}, {"--classifier": classifier})
    if recipe is not None:  # the recipe's settings, where the user gave none
        chosen = {k: v for k, v in recipes.recipe(recipe).items() if left_at_default(k)}
        size = chosen.pop("size", size)
        settings |= chosen
    restarts, epochs = settings["restarts"], settings["epochs"]
    cfg = CalibratorConfig(**settings, batch_size=batch_size, seed=seed,
                           size=calibrator_size(settings["arch"], size, width, blocks),
                           restart_epochs=(max(1, epochs // 5) if restart_epochs is None
                                           else restart_epochs) if restarts > 1 else 0,
                           train_size=parse_hw(train_size))
    cfg.validate()
    check_states(tasks, restarts, resume, force)
    for task in tasks:  # a finished calibrator is replaced only when asked (or continued)
        if task.out.exists() and not (force or resume):
            raise EdgeCalibError(f"--out {task.out} already exists; pass --force to replace it")
        check_replaceable(task.out)
    clf = load_classifier(classifier)
    dist, dev = Distributed.from_environment(resolve_device(device))
    try:
        if dist.is_main:  # the one writer: a second process writing the same --out is refused
            for task in tasks:
                hold_output(task.out)
        if len(tasks) == 1:
            dist.per_rank(batch_size)
        spec = clf.spec if cfg.train_size is None else dataclasses.replace(
            clf.spec, height=cfg.train_size[0], width=cfg.train_size[1])
        src = load_domain(source, "train", data_root, spec, max_samples, seed, unlabelled=True)
        # per-epoch source monitor (labelled source frames): the validation split where there
        # is one (CamVid), so that the test frames that report retention are never looked at
        monitor_size = 2000 if clf.task == "classification" else 20
        src_split = "val" if has_val_split(source) else "test"
        src_test = (load_domain(source, src_split, data_root, spec, monitor_size, seed)
                    if src_split == "val" or has_test_split(source) else None)
        if src_test is not None:
            check_task(clf.task, src_test)
        shared = SharedInputs(str(classifier), clf, source, src, src_test, src_split, spec,
                              data_root, max_samples, seed, monitor_test,
                              cap_batch=left_at_default("batch_size"))
        results = train_domains(tasks, cfg, shared, dev, dist, resume, force,
                                progress=not quiet and dist.is_main)
    except BaseException:
        dist.close(finished=False)
        raise
    dist.close()
    if dist.is_main:
        for result in results:
            click.echo(json.dumps(result))
    failed = [r["domain"] for r in results if "error" in r]
    if failed:
        raise EdgeCalibError(f"{len(failed)} of {len(results)} domains failed "
                             f"({', '.join(failed)}); the others were written")


@click.command("eval")
@click.option("--classifier", type=click.Path(dir_okay=False), default=None)
@click.option("--calibrator", type=click.Path(dir_okay=False), default=None)
@click.option("--deploy", type=click.Path(file_okay=False), default=None,
              help="Evaluate through a deploy bundle (ONNX Runtime) instead of checkpoints.")
@click.option("--domain", default=None, help="With --deploy: the domain whose calibrator runs.")
@click.option("--ignore-index", type=click.IntRange(0, 255), default=None,
              help="Segmentation labels: the value that marks unlabelled pixels in the "
                   "dataset's masks [default: 255 for a label folder; CamVid's own files "
                   "use 11].")
@click.option("--unknown", type=click.Choice(["model", "histogram"]), default=None,
              help="With --deploy: score the frames as `run --unknown RULE` runs frames voted "
                   "unknown (the frozen model alone, or after histogram matching to the bundle's "
                   "source pixels), instead of a domain's calibrator.")
@click.option("--fused/--separate", default=False,
              help="With --deploy: run the fused graph instead of two sessions.")
@click.option("--dataset", required=True,
              help="A dataset name, or a folder: images/ + labels/ (segmentation; labels are "
                   "single-channel PNGs of class indices, 255 unlabelled), or class-index "
                   "subfolders (classification).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True, help="val: the datasets that have one (CamVid).")
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=None)
@click.option("--photometric", type=click.Choice(["histogram", "gain-gamma"]), default=None,
              help="Baseline: correct the images before the frozen model instead of a "
                   "calibrator (per-frame histogram matching to --reference, or a global "
                   "gain/gamma fitted on --fit).")
@click.option("--reference", default=None, help="With --photometric: source images (train split).")
@click.option("--fit", "fit_on", default=None,
              help="With --photometric gain-gamma: unlabelled target images (train split).")
@click.option("--label-map", type=click.Path(dir_okay=False), default=None,
              help="A JSON object {model class name: label id}: score a model whose classes "
                   "differ from the labels' (several classes may share an id; ids no class "
                   "maps to are left out and listed).")
@click.option("--unlabelled", is_flag=True,
              help="Scores that need no labels (to rank calibrators on a domain's unlabelled "
                   "frames): the source-statistics distance, the pixel W1 to the source, the "
                   "mean prediction entropy and the information score (higher is better).")
def evaluate(classifier, calibrator, deploy, domain, ignore_index, unknown, fused, dataset,
             split, data_root, as_json, batch_size, device, max_samples, photometric, reference,
             fit_on, unlabelled, label_map):
    """Accuracy (segmenters: mIoU, per-class IoU, pixel accuracy, fwIoU) of the frozen model,
    with a calibrator or a classical photometric correction in front when one is given."""
    if unlabelled and (deploy or photometric):
        raise EdgeCalibError("--unlabelled scores checkpoints: give --classifier (and "
                             "--calibrator), not --deploy or --photometric")
    if unknown and not deploy:
        raise EdgeCalibError("--unknown scores a bundle's fallback: give --deploy")
    if deploy:
        if classifier or calibrator:
            raise EdgeCalibError("--deploy replaces --classifier/--calibrator; give one or the other")
        from ..bench.accuracy import evaluate_bundle

        result = evaluate_bundle(deploy, domain, dataset, split, data_root, batch_size,
                                 max_samples, fused, label_map, unknown, ignore_index)
    else:
        if not classifier:
            raise EdgeCalibError("give --classifier (and optionally --calibrator), or --deploy")
        correction = None
        if photometric:
            if calibrator:
                raise EdgeCalibError("--photometric replaces --calibrator; give one or the other")
            if not reference:
                raise EdgeCalibError("--photometric needs --reference DATASET (source images)")
            from ..data import load_dataset
            from ..imaging.photometric import fit_photometric

            correction = fit_photometric(
                photometric, load_dataset(reference, "train", data_root).images,
                load_dataset(fit_on, "train", data_root).images if fit_on else None)
        result = _evaluate_checkpoints(classifier, calibrator, dataset, split, data_root,
                                       batch_size, device, max_samples, correction, unlabelled,
                                       label_map, ignore_index)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:>22}: {value}")


def _evaluate_checkpoints(classifier, calibrator, dataset, split, data_root, batch_size, device,
                          max_samples, correction=None, unlabelled=False, label_map=None,
                          ignore_index=None):
    from ..core.scoring import LabelMap
    from ..data import load_dataset
    from ..models.store import load_calibrator, load_classifier
    from ..train.evaluate import check_task, classification, segmentation, unlabelled_scores
    from ..train.tensors import DomainData, resolve_device

    clf = load_classifier(classifier)
    mapping = LabelMap.load(label_map, clf.labels) if label_map else None
    cal = None
    if calibrator:
        cal = load_calibrator(calibrator)
        cal.check_pairs_with(clf)
    dev = resolve_device(device)
    images = load_dataset(dataset, split, data_root, image_size=(clf.spec.height, clf.spec.width),
                          unlabelled=unlabelled)
    images = images.subset(max_samples)
    if ignore_index is not None:
        images.void = ignore_index
    if correction is not None:
        images.images = correction(images.images)
    data = DomainData(images, clf.spec)
    check_task(clf.task, data)
    module, cal_module = clf.module.to(dev), None if cal is None else cal.module.to(dev)
    if unlabelled:
        stats = clf.source_stats
        if stats is None:
            raise EdgeCalibError(f"{classifier} has no recorded source statistics (they are "
                                 "recorded by train-classifier, compress --calib-dataset and "
                                 "import-model --source)")
        score = unlabelled_scores(module, data, stats, cal_module, min(batch_size, 64), dev)
    else:
        score = (segmentation(module, data, cal_module, device=dev, labels=clf.labels,
                              label_map=mapping) if clf.task == "segmentation"
                 else classification(module, data, cal_module, batch_size, dev, clf.labels,
                                     mapping))
        score = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in score.items()}
    return {"dataset": dataset, "split": split, "n": len(data), **score,
            "photometric": None if correction is None else correction.params,
            "backend": "torch", "classifier": classifier,
            "classifier_fingerprint": clf.fingerprint, "classifier_params": clf.params,
            "calibrator": calibrator, "domain": None if cal is None else cal.meta.domain,
            "calibrator_params": None if cal is None else cal.params,
            "overhead_params_pct": None if cal is None else round(100.0 * cal.params / clf.params, 3)}


@click.command()
@click.option("--classifier", required=True, type=click.Path(dir_okay=False))
@click.option("--target", required=True, help="Target images (labels unused).")
@data_root_option
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--max-samples", type=click.IntRange(min=1), default=None)
def adabn(classifier, target, data_root, out, max_samples):
    """Baseline: re-estimate BatchNorm statistics on TARGET (changes the deployed model)."""
    from ..models.store import load_classifier
    from ..train.adabn import adapt_batchnorm
    from ..train.tensors import load_domain

    clf = load_classifier(classifier)
    data = load_domain(target, "train", data_root, clf.spec, max_samples, unlabelled=True)
    adapted = adapt_batchnorm(clf, data)
    fingerprint = adapted.save(out)
    click.echo(json.dumps({"out": out, "fingerprint": fingerprint,
                           "source_fingerprint": clf.fingerprint, "target": target,
                           "images": len(data)}))


@click.command("import-model")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--task", type=click.Choice(["classification", "segmentation"]),
              default="classification", show_default=True)
@click.option("--input-size", default=None, metavar="HxW",
              help="The model's input size [default: the model's, when it is fixed].")
@click.option("--mean", default="0.5", show_default=True,
              help="Per-channel mean subtracted from pixels in [0, 1] (one value, or one per "
                   "channel).")
@click.option("--std", default="0.5", show_default=True,
              help="Per-channel standard deviation the pixels are divided by (one value, or one "
                   "per channel).")
@click.option("--colour-order", type=click.Choice(["RGB", "BGR"]), default="RGB",
              show_default=True)
@click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto",
              show_default=True,
              help="The graph's input layout (auto: from the axis that holds 1 or 3 channels); "
                   "an NHWC graph is deployed with a Transpose from NCHW in front.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), default=None,
              help="Class names, one a line [default: 0, 1, ... from the model's outputs].")
@click.option("--check-dataset", default=None,
              help="Real images to verify the conversion on (a dataset or folder).")
@click.option("--source", default=None,
              help="The model's source images (a dataset or folder; labels unused): its "
                   "activation statistics on them are recorded for `train --objective stats` "
                   "and the `curve` calibrator [default: recorded at training time from "
                   "`train --source`].")
@click.option("--output", "output_name", default=None,
              help="The graph output to score and calibrate for [default: the first]; the "
                   "deployed graph lists it first.")
@click.option("--force", is_flag=True,
              help="Import even when the conversion disagrees with ONNX Runtime (recorded as a "
                   "warning that doctor and the bundle show).")
@data_root_option
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def import_model(model, task, input_size, mean, std, colour_order, layout, labels_file,
                 check_dataset, source, output_name, force, data_root, out):
    """Import a frozen ONNX network (deployed unchanged) so calibrators can be trained for it."""
    from ..models.importer import ImportRequest, import_onnx

    def floats(text, name):
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            raise EdgeCalibError(f"--{name} {text!r}: give comma-separated numbers") from None

    from ..core.fileio import refuse_writing_over_inputs
    from ..models.checkpoint import check_replaceable

    refuse_writing_over_inputs({"--out": out}, {"MODEL": model, "--labels": labels_file})
    hold_output(out)
    check_replaceable(out)
    labels = None
    if labels_file:
        try:
            labels = [line.strip() for line in open(labels_file) if line.strip()]
        except OSError as exc:
            raise EdgeCalibError(f"--labels {labels_file}: {exc.strerror}") from None
    request = ImportRequest(task, parse_hw(input_size, "--input-size"), floats(mean, "mean"),
                            floats(std, "std"), colour_order, layout, labels, force, output_name)
    images = name = None
    if check_dataset:
        from ..data import load_dataset

        images = load_dataset(check_dataset, "test", data_root).images
        name = check_dataset
    clf = import_onnx(model, request, images, name)
    outputs = clf.metrics["outputs"]
    if len(outputs) > 1:
        echo_err(f"import-model: the model has {len(outputs)} outputs ({', '.join(outputs)}); "
                 f"using {clf.metrics['output']!r}" + ("" if output_name else
                                                       " (the first; --output NAME picks "
                                                       "another)"))
    if clf.metrics["output_batch_axis_added"]:
        echo_err(f"import-model: output {clf.metrics['output']!r} has no batch axis ([K, H, W] "
                 "at a fixed batch of 1); the imported graph adds it with one Unsqueeze")
    if source:
        from ..train.source_stats import record_source_stats
        from ..train.tensors import load_domain

        data = load_domain(source, "train", data_root, clf.spec, unlabelled=True)
        clf.source_stats = record_source_stats(clf.module, data, graph=clf.onnx_bytes)
    fingerprint = clf.save(out)
    click.echo(json.dumps({"out": out, "fingerprint": fingerprint, "task": task,
                           "classes": clf.num_classes, "input_spec": clf.spec.to_dict(),
                           "graph_layout": clf.graph_layout,
                           "int8_graph": clf.metrics["int8_graph"],
                           "output": clf.metrics["output"], "outputs": outputs,
                           "output_batch_axis_added": clf.metrics["output_batch_axis_added"],
                           "conversion_check": clf.metrics["conversion_check"],
                           "conversion_warning": clf.metrics["conversion_warning"],
                           "onnx_sha256": clf.metrics["onnx_sha256"]}))
