"""Checkpoints are data: pickled payloads refused, corruption named, fingerprints enforced."""

import pytest
import torch
from helpers import random_classifier

from edge_calib.core.errors import EdgeCalibError
from edge_calib.models.calibrators.resnet import ResnetCalibrator
from edge_calib.models.records import CalibratorRecord, TrainingSummary
from edge_calib.models.store import load_calibrator, load_classifier, save_calibrator


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_pickled_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "edge-calib", "kind": "classifier", "version": 1, "meta": "{}",
                "tensors": {"x": Payload()}}, path)
    with pytest.raises(EdgeCalibError, match="refused to load"):
        load_classifier(path)


def test_truncated_and_foreign_files(tmp_path):
    clf = random_classifier("lenet")
    good = tmp_path / "clf.pt"
    clf.save(good)
    assert load_classifier(good).fingerprint == clf.fingerprint
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(EdgeCalibError, match="corrupt or truncated"):
        load_classifier(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(EdgeCalibError, match="not an edge-calib checkpoint"):
        load_classifier(tmp_path / "other.pt")
    with pytest.raises(EdgeCalibError, match="no such checkpoint"):
        load_classifier(tmp_path / "missing.pt")
    with pytest.raises(EdgeCalibError, match="is a classifier checkpoint, expected calibrator"):
        load_calibrator(good)


def test_fingerprint_changes_with_any_state(tmp_path):
    clf = random_classifier("dtn")
    before = clf.fingerprint
    clf.module.bn2.running_var[3] += 1e-3  # a BatchNorm statistic, not a parameter
    assert clf.fingerprint != before


def test_calibrator_for_another_classifier_names_both(tmp_path):
    a, b = random_classifier("lenet", seed=0), random_classifier("lenet", seed=1)
    a.path, b.path = "a.pt", "b.pt"
    spec = a.spec
    g = ResnetCalibrator(channels=1, width=2, blocks=1, lo=spec.lo, hi=spec.hi)
    save_calibrator(tmp_path / "g.pt", g, CalibratorRecord(
        domain="usps", classifier_fingerprint=a.fingerprint, input_spec=spec))
    cal = load_calibrator(tmp_path / "g.pt")
    cal.check_pairs_with(a)
    with pytest.raises(EdgeCalibError) as err:
        cal.check_pairs_with(b)
    assert a.fingerprint in str(err.value) and b.fingerprint in str(err.value)


def test_calibrator_record_round_trip_and_malformed_fields(tmp_path):
    """The record written is the record read (unknown keys kept); a missing or mistyped field
    of a real checkpoint is one line naming it."""
    from edge_calib.models.checkpoint import load_checkpoint, save_checkpoint

    clf = random_classifier("lenet", seed=0)
    g = ResnetCalibrator(channels=1, width=2, blocks=1, lo=clf.spec.lo, hi=clf.spec.hi)
    written = save_calibrator(tmp_path / "g.pt", g, CalibratorRecord(
        domain="usps", classifier_fingerprint=clf.fingerprint, input_spec=clf.spec,
        source="mnist", target="usps", training=TrainingSummary(epochs=3)))
    read = load_calibrator(tmp_path / "g.pt").meta
    assert read == written and read.architecture == g.config and not read.int8
    meta, tensors = load_checkpoint(tmp_path / "g.pt", "calibrator")
    assert meta["calibrator"] == g.config and "architecture" not in meta  # the format is kept
    save_checkpoint(tmp_path / "newer.pt", "calibrator", meta | {"camera": "cam-7"}, tensors)
    assert load_calibrator(tmp_path / "newer.pt").meta.extra == {"camera": "cam-7"}
    for name, bad, words in (("missing", {k: v for k, v in meta.items()
                                          if k != "classifier_fingerprint"},
                              "('classifier_fingerprint' missing)"),
                             ("typed", meta | {"domain": 7}, "('domain' is a int)"),
                             ("spec", meta | {"input_spec": {"height": 28}},
                              "(input_spec:")):
        save_checkpoint(tmp_path / f"{name}.pt", "calibrator", bad, tensors)
        with pytest.raises(EdgeCalibError, match="calibrator checkpoint is malformed") as err:
            load_calibrator(tmp_path / f"{name}.pt")
        assert words in str(err.value) and "\n" not in str(err.value)


def test_a_training_summary_reads_old_and_new_checkpoints_and_names_a_bad_key():
    """The checkpoint's ``training`` is a typed record: one written before a field existed
    reads it as None, keys this version does not know are kept and written back, and a
    mistyped field is one line naming its key path."""
    from edge_calib.core.errors import EdgeCalibError

    old = {"epochs": 30, "selection": None, "ema": 0.99, "world_size": 1, "lr_final": 0.0}
    summary = TrainingSummary.read(old, "old.pt")
    assert summary.epochs == 30 and summary.batch_size is None
    assert summary.extra == {"lr_final": 0.0}
    assert summary.to_dict() == {"epochs": 30, "ema": 0.99, "world_size": 1, "lr_final": 0.0}
    with pytest.raises(EdgeCalibError, match=r"^bad.pt: calibrator checkpoint is malformed "
                                             r"\('training.batch_size' is a str\)$"):
        TrainingSummary.read({"batch_size": "64"}, "bad.pt")


def test_classifier_record_round_trip_old_keys_and_malformed_fields(tmp_path):
    """A classifier checkpoint's metadata is a typed record: the keys written are the keys
    always written, one written before ``metrics`` existed still loads, unknown keys are kept
    as read, and a missing or mistyped field is one line naming it (before, a string
    ``num_classes`` read as "does not match its architecture")."""
    from edge_calib.models.checkpoint import load_checkpoint, save_checkpoint
    from edge_calib.models.records import ClassifierRecord

    clf = random_classifier("lenet", seed=0)
    clf.save(tmp_path / "c.pt")
    meta, tensors = load_checkpoint(tmp_path / "c.pt", "classifier")
    assert set(meta) == {"arch", "num_classes", "input_spec", "compression", "labels", "metrics",
                         "fingerprint"}
    record = ClassifierRecord.read(meta, "c.pt")
    assert record.to_dict() == meta and record.num_classes == 10 and not record.int8
    old = {k: v for k, v in meta.items() if k != "metrics"} | {"camera": "cam-7"}
    save_checkpoint(tmp_path / "old.pt", "classifier", old, tensors)
    loaded = load_classifier(tmp_path / "old.pt")
    assert loaded.metrics == {} and loaded.fingerprint == clf.fingerprint
    assert ClassifierRecord.read(old, "old.pt").extra == {"camera": "cam-7"}
    for name, bad, words in (("missing", {k: v for k, v in meta.items() if k != "labels"},
                              "('labels' missing)"),
                             ("typed", meta | {"num_classes": "10"}, "('num_classes' is a str)"),
                             ("labels", meta | {"labels": ["a", "b"]},
                              "('labels' has 2 names for 10 classes)"),
                             ("spec", meta | {"input_spec": {"height": 28}}, "(input_spec:")):
        save_checkpoint(tmp_path / f"{name}.pt", "classifier", bad, tensors)
        with pytest.raises(EdgeCalibError, match="classifier checkpoint is malformed") as err:
            load_classifier(tmp_path / f"{name}.pt")
        assert words in str(err.value) and "\n" not in str(err.value)


def test_the_metadata_alone_is_read_and_checked_as_the_whole_checkpoint(tmp_path):
    """``load_checkpoint_meta`` (what a resumed run asks before it loads its state) gives the
    metadata ``load_checkpoint`` gives, and refuses what it refuses."""
    from edge_calib.models.checkpoint import load_checkpoint, load_checkpoint_meta

    clf = random_classifier("lenet", seed=0)
    clf.save(tmp_path / "c.pt")
    assert load_checkpoint_meta(tmp_path / "c.pt", "classifier") == \
        load_checkpoint(tmp_path / "c.pt", "classifier")[0]
    with pytest.raises(EdgeCalibError, match="is a classifier checkpoint, expected state"):
        load_checkpoint_meta(tmp_path / "c.pt", "state")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:5000])
    with pytest.raises(EdgeCalibError, match="corrupt or truncated"):
        load_checkpoint_meta(tmp_path / "cut.pt", "classifier")


def test_source_statistics_travel_typed_and_a_malformed_record_is_named(tmp_path):
    """A classifier keeps its recorded source statistics as a ``SourceStats`` (not a dict of
    "meta" and "tensors"): saved beside the weights, read back equal, outside the fingerprint;
    a record whose metadata names taps the file does not hold is one line naming the file."""
    from edge_calib.models.checkpoint import load_checkpoint, save_checkpoint
    from edge_calib.models.source_record import SourceStats

    clf = random_classifier("lenet", seed=0)
    bare = clf.fingerprint
    clf.source_stats = SourceStats([torch.arange(6.0)], [torch.ones(6)], torch.full((10,), 0.1),
                                   torch.linspace(-1, 1, 65)[None], "mnist", 3)
    clf.save(tmp_path / "c.pt")
    back = load_classifier(tmp_path / "c.pt")
    assert isinstance(back.source_stats, SourceStats) and back.fingerprint == bare
    assert back.source_stats.dataset == "mnist" and back.source_stats.images == 3
    assert torch.equal(back.source_stats.means[0], torch.arange(6.0))
    assert torch.equal(back.source_stats.pixel_quantiles, clf.source_stats.pixel_quantiles)
    meta, tensors = load_checkpoint(tmp_path / "c.pt", "classifier")
    assert meta["source_stats"] == {"dataset": "mnist", "images": 3, "taps": 1, "channels": [6]}
    meta["source_stats"]["taps"] = 2
    save_checkpoint(tmp_path / "bad.pt", "classifier", meta, tensors)
    with pytest.raises(EdgeCalibError, match=r"bad.pt: the stored source statistics are "
                                             r"malformed \(KeyError\('tap1.mean'\)\)$"):
        load_classifier(tmp_path / "bad.pt")


def _rewrite_state(path, change):
    from edge_calib.models.checkpoint import load_checkpoint, save_checkpoint

    meta, tensors = load_checkpoint(path, ("calibrator-training-state",
                                           "supervised-training-state"))
    kind = "calibrator-training-state" if "epoch" in meta else "supervised-training-state"
    change(meta)
    save_checkpoint(path, kind, meta, tensors)


def test_training_states_are_typed_old_ones_resume_and_a_malformed_one_is_named(tmp_path):
    """Both loops' states are read through one typed record: a calibrator state written before
    ``best``, ``restarts`` and ``config.restart`` existed resumes to the same weights, and a
    missing or mistyped key is one line naming its path, before any tensor is loaded."""
    from helpers import random_domain

    from edge_calib.train.calibrate import CalibratorConfig, CalibratorTrainer
    from edge_calib.train.loop import state_paths
    from edge_calib.train.restarts import saved_batch
    from edge_calib.train.supervised import Fit, fit

    clf = random_classifier("dtn")
    src, tgt = random_domain(48, seed=1, labelled=False), random_domain(48, seed=2, bright=40,
                                                                        labelled=False)
    cfg = CalibratorConfig(epochs=2, batch_size=16, arch="pointwise", eps=0.3, seed=3)

    def trainer(name):
        return CalibratorTrainer(clf, src, tgt, cfg, torch.device("cpu"),
                                 *state_paths(tmp_path / f"{name}.calib.pt"))

    straight, _ = trainer("a").run(progress=False)
    trainer("b").run(progress=False, until_epoch=1)
    state = state_paths(tmp_path / "b.calib.pt")[0]
    _rewrite_state(state, lambda m: [m.pop("best"), m.pop("restarts"), m["config"].pop("restart")])
    assert saved_batch(tmp_path / "b.calib.pt", cfg) == 16
    old = trainer("b")
    old.load_state()
    assert old.epoch == 1 and old.restarts is None
    resumed, _ = old.run(progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name

    _rewrite_state(state, lambda m: m["config"].update(batch_size="16"))
    with pytest.raises(EdgeCalibError, match=r"training state is malformed \('config.batch_size' "
                                             r"is a str\)"):
        trainer("b").load_state()
    _rewrite_state(state, lambda m: m.pop("history"))
    with pytest.raises(EdgeCalibError, match=r"\('history' missing\)"):
        saved_batch(tmp_path / "b.calib.pt", cfg)

    data = random_domain(32, seed=4)
    supervised = tmp_path / "clf.state.pt"
    model = random_classifier("dtn", seed=1).module.requires_grad_(True)
    fit(model, data, Fit(1, 16, 1e-3), torch.nn.functional.cross_entropy, "cpu",
        state_path=supervised, progress=False)
    _rewrite_state(supervised, lambda m: m["fit"].pop("batch_size"))
    with pytest.raises(EdgeCalibError, match=r"clf.state.pt: training state is malformed "
                                             r"\('fit.batch_size' missing\)"):
        fit(model, data, Fit(2, 16, 1e-3), torch.nn.functional.cross_entropy, "cpu",
            state_path=supervised, resume=True, progress=False, cap_batch=True)
