"""The frozen classifier stays frozen; training resumes bit-for-bit."""

import numpy as np
import pytest
import torch
from helpers import random_classifier, random_domain

from edge_calib.core.errors import EdgeCalibError
from edge_calib.models.checkpoint import load_checkpoint
from edge_calib.train.calibrate import CalibratorConfig, CalibratorTrainer
from edge_calib.train.loop import state_paths
from edge_calib.train.frozen import FrozenForward


def test_train_mode_forward_leaves_state_untouched():
    clf = random_classifier("dtn")
    before = clf.fingerprint
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    eval_out = clf.module(x)
    torch.manual_seed(0)
    train_out = FrozenForward(clf.module, "train")(x)
    assert not torch.allclose(train_out, eval_out)  # dropout and batch statistics were active
    batch_stats = FrozenForward(clf.module, "batch-stats")(x)
    assert torch.allclose(FrozenForward(clf.module, "batch-stats")(x), batch_stats)  # no dropout
    assert clf.fingerprint == before
    assert not clf.module.training and all(not m.training for m in clf.module.modules())
    assert torch.equal(clf.module(x), eval_out)


def small_config(**kw):
    base = dict(epochs=2, batch_size=16, arch="resnet", size={"width": 2, "blocks": 1}, patch=4,
                eps=0.3, seed=3)
    return CalibratorConfig(**(base | kw))


def make_trainer(tmp_path, cfg, name="g", clf=None):
    clf = clf or random_classifier("dtn")
    src = random_domain(48, seed=1, labelled=False)
    tgt = random_domain(48, seed=2, bright=40, labelled=False)
    state, metrics = state_paths(tmp_path / f"{name}.calib.pt")
    return CalibratorTrainer(clf, src, tgt, cfg, torch.device("cpu"), state, metrics)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resume_is_bit_for_bit(tmp_path, mode):
    straight = make_trainer(tmp_path, small_config(ema=0.9, classifier_mode=mode), "a")
    g_straight, _ = straight.run(progress=False)

    first = make_trainer(tmp_path, small_config(ema=0.9, classifier_mode=mode), "b")
    first.run(progress=False, until_epoch=1)  # interrupted after the first epoch
    resumed = make_trainer(tmp_path, small_config(ema=0.9, classifier_mode=mode), "b")
    resumed.load_state()
    assert resumed.epoch == 1
    g_resumed, _ = resumed.run(progress=False)

    for (name, a), (_, b) in zip(g_straight.state_dict().items(), g_resumed.state_dict().items()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.D_feat.parameters(), resumed.D_feat.parameters()):
        assert torch.equal(a, b)
    hist_a = [{k: v for k, v in h.items() if k != "time_s"} for h in straight.history]
    hist_b = [{k: v for k, v in h.items() if k != "time_s"} for h in resumed.history]
    assert hist_a == hist_b
    meta, _ = load_checkpoint(resumed.state_path, "calibrator-training-state")
    assert meta["epoch"] == 2 and len(resumed.metrics_path.read_text().splitlines()) == 2


def test_resume_refuses_changed_settings(tmp_path):
    make_trainer(tmp_path, small_config(epochs=1), "c").run(progress=False)
    other = make_trainer(tmp_path, small_config(epochs=1, eps=0.5), "c")
    with pytest.raises(EdgeCalibError, match="settings differ.*eps"):
        other.load_state()
    longer = make_trainer(tmp_path, small_config(epochs=3), "c")
    with pytest.raises(EdgeCalibError, match="cosine schedule depends on it"):
        longer.load_state()
    extended = make_trainer(tmp_path, small_config(epochs=1, schedule="constant"), "f")
    extended.run(progress=False)
    more = make_trainer(tmp_path, small_config(epochs=2, schedule="constant"), "f")
    more.load_state()  # a constant schedule may be extended
    assert more.run(progress=False)[1].epochs == 2


def test_frozen_check_fails_when_a_weight_changes(tmp_path):
    trainer = make_trainer(tmp_path, small_config(epochs=1), "d")
    trainer.run(progress=False)
    with torch.no_grad():
        trainer.classifier.module.fc2.weight[0, 0] += 1.0
    with pytest.raises(EdgeCalibError, match="frozen classifier changed"):
        trainer.check_frozen()


def test_training_moves_the_calibrator_and_selection_uses_holdout(tmp_path):
    cfg = small_config(epochs=2, select="entropy", holdout=0.25, lr=1e-3)
    trainer = make_trainer(tmp_path, cfg, "e")
    g, summary = trainer.run(progress=False)
    assert summary.selection["rule"].startswith("lowest prediction entropy")
    entropies = [h["holdout_entropy"] for h in trainer.history]
    assert summary.selection["epoch"] == 1 + int(np.argmin(entropies))
    assert summary.selection["holdout_entropy"] == min(entropies)
    assert len(trainer.holdout) == 12 and len(trainer.target) == 36
    assert all("holdout_entropy" in h for h in trainer.history)
    x = trainer.target.batch(range(8), "cpu")
    assert (g(x) - x).abs().max() > 0  # no longer the identity


def naive_step(t, xs, xt, src, it):
    """The algorithm written plainly: each discriminator step recomputes G(x) and F(G(x))
    without gradients, then the calibrator step recomputes them with gradients."""
    for _ in range(t.cfg.d_steps):
        with torch.no_grad():
            cs, ct = t.G(torch.cat([xs, xt])).split([len(xs), len(xt)])
            feats = [t.frozen(x) for x in (xs, xt, cs, ct)]
        loss = t.loss_D([t.D_pix(x) for x in (xs, xt, cs, ct)]) + t.loss_D([t.D_feat(f) for f in feats])
        t.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        t.opt_D.step()
    t.D_pix.requires_grad_(False)
    t.D_feat.requires_grad_(False)
    cs, ct = t.G(torch.cat([xs, xt])).split([len(xs), len(xt)])
    loss = t.loss_G(t.D_pix(ct), t.D_feat(t.frozen(ct)), t.D_pix(cs), t.D_feat(t.frozen(cs)))
    t.opt_G.zero_grad(set_to_none=True)
    loss.backward()
    t.opt_G.step()
    t.D_pix.requires_grad_(True)
    t.D_feat.requires_grad_(True)


def test_shared_forward_step_equals_the_plain_algorithm(tmp_path):
    fast = make_trainer(tmp_path, small_config(d_steps=2, ema=0.0), "fast")
    plain = make_trainer(tmp_path, small_config(d_steps=2, ema=0.0), "plain")
    for step in range(3):
        idx = np.arange(step * 16, (step + 1) * 16)
        xs, xt = fast.source.batch(idx, "cpu"), fast.target.batch(idx, "cpu")
        torch.manual_seed(step)
        fast._step(xs, xt, idx, idx)
        torch.manual_seed(step)
        naive_step(plain, xs, xt, idx, idx)
    for a, b in zip(fast.G.parameters(), plain.G.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(fast.D_pix.parameters(), plain.D_pix.parameters(), strict=True):
        assert torch.equal(a, b)


def test_diverging_training_stops_and_keeps_the_last_good_state(tmp_path):
    trainer = make_trainer(tmp_path, small_config(epochs=3, schedule="constant"), "nan")
    trainer.run(progress=False, until_epoch=1)
    good = trainer.state_path.read_bytes()
    for group in trainer.opt_G.param_groups + trainer.opt_D.param_groups:
        group["lr"] = 1e38  # the next steps overflow the weights to inf, the losses to NaN
    with pytest.raises(EdgeCalibError, match=r"training stopped at epoch 2, step \d+: the losses "
                                             r"became non-finite.*last good state \(epoch 1\)"):
        trainer.run(progress=False)
    assert trainer.state_path.read_bytes() == good
    assert len(trainer.metrics_path.read_text().splitlines()) == 1


def source_kl(trainer, g):
    """Mean KL from F(x_s) to F(G(x_s)) over the source images, by hand."""
    x = trainer.source.batch(np.arange(len(trainer.source)), "cpu")
    with torch.no_grad():
        p = torch.softmax(trainer.classifier.module(x), 1)
        log_q = torch.log_softmax(trainer.classifier.module(g(x)), 1)
    return float((p * (p.log() - log_q)).sum(1).mean())


def sharp_classifier(factor=30.0):
    """A random classifier predicts almost uniformly; scaling its last layer makes its
    predictions confident, so that a change of input changes them."""
    clf = random_classifier("dtn")
    last = [m for m in clf.module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
    return clf


def test_consistency_term_keeps_the_source_predictions(tmp_path):
    """The histogram term alone moves source images too (one transform for both domains);
    with the consistency term the frozen network's source predictions move much less."""
    base = dict(arch="thumbnail", size={}, epochs=4, lr=1e-2, ema=0.0, eps=1.0, w_target=0.0,
                w_source=0.0, w_histogram=1.0)
    moved_trainer = make_trainer(tmp_path, small_config(**base), "moved", sharp_classifier())
    moved, _ = moved_trainer.run(progress=False)
    kept_trainer = make_trainer(tmp_path, small_config(**base, w_consistency=10.0), "kept",
                                sharp_classifier())
    kept, _ = kept_trainer.run(progress=False)
    assert source_kl(kept_trainer, kept) < 0.5 * source_kl(moved_trainer, moved)


def test_histogram_term_moves_target_pixels_towards_the_source(tmp_path):
    cfg = small_config(arch="thumbnail", size={}, epochs=4, lr=1e-2, ema=0.0, eps=1.0,
                       w_target=0.0, w_source=0.0, w_histogram=1.0)
    trainer = make_trainer(tmp_path, cfg, "hist")
    g, _ = trainer.run(progress=False)
    xs = trainer.source.batch(np.arange(len(trainer.source)), "cpu")
    xt = trainer.target.batch(np.arange(len(trainer.target)), "cpu")
    with torch.no_grad():
        gap_before = abs(float(xt.mean() - xs.mean()))
        gap_after = abs(float(g(xt).mean() - xs.mean()))
    assert gap_before > 0.2 and gap_after < 0.3 * gap_before
    logged = [h["loss_histogram"] for h in trainer.history]  # the term is logged per epoch
    assert logged[-1] < 0.5 * logged[0]
