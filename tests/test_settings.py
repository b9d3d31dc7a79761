"""The calibrator settings are declared once (``train/settings.py``): the ``train`` and
``adapt`` options are built from the declaration, and ``validate`` checks its ranges and
choices, naming the option."""

import dataclasses

import pytest

from edge_calib.commands.adapt import adapt
from edge_calib.commands.training import train
from edge_calib.core.errors import EdgeCalibError
from edge_calib.train.recipes import recipe
from edge_calib.train.settings import CalibratorConfig, option_name

REQUIRED = ["--classifier", "c.pt", "--source", "mnist", "--target", "usps", "--domain", "usps",
            "--out", "o.pt"]


def parsed(command, args):
    with command.make_context(command.name, list(args)) as ctx:  # click consumes the list
        return ctx.params


def test_train_takes_every_declared_option_at_its_declared_default():
    params = parsed(train, REQUIRED)
    declared = CalibratorConfig()
    for setting in CalibratorConfig.options():
        assert params[setting.name] == getattr(declared, setting.name), setting.name
    flags = {o for p in train.params for o in p.opts}
    assert {option_name(s) for s in CalibratorConfig.options()} <= flags
    assert "--beta1" not in flags and "--restart" not in flags  # internal settings
    changed = parsed(train, [*REQUIRED, "--w-stats", "2.5", "--select", "stats", "--d-steps", "3"])
    assert (changed["w_stats"], changed["select"], changed["d_steps"]) == (2.5, "stats", 3)


def test_adapt_takes_the_statistics_recipe_as_its_defaults():
    params = parsed(adapt, ["--deploy", "b", "--frames", "f", "--domain", "dusk"])
    statistics = recipe("statistics")
    for name in ("arch", "eps", "lr", "ema", "w_stats", "w_consistency", "w_histogram"):
        assert params[name] == statistics[name], name
    assert params["size"] == statistics["size"] and params["restarts"] == 3
    assert "objective" not in params and "d_lr" not in params


@pytest.mark.parametrize("settings,message", [
    ({"ema": 1.0}, "--ema must be in [0, 1), got 1.0"),
    ({"ema": -0.5}, "--ema must be in [0, 1), got -0.5"),
    ({"holdout": 1.0}, "--holdout must be in [0, 1), got 1.0"),
    ({"d_lr": float("nan")}, "--d-lr must be a positive finite number, got nan"),
    ({"w_marginal": -1.0}, "--w-marginal must be a finite number >= 0, got -1.0"),
    ({"d_steps": 0}, "--d-steps must be >= 1, got 0"),
    ({"classifier_mode": "test"}, "unknown --classifier-mode 'test'; choose one of eval, "
                                  "dropout, batch-stats, train"),
    ({"perturbation": "two-sided"}, "unknown --perturbation 'two-sided'"),
])
def test_declared_ranges_and_choices_are_checked_by_option_name(settings, message):
    with pytest.raises(EdgeCalibError) as err:
        CalibratorConfig(**settings).validate()
    assert str(err.value).startswith(message)


def test_every_setting_declares_its_range_or_choices_or_is_text():
    """A new setting cannot slip in unchecked: a number declares where it may go."""
    for setting in dataclasses.fields(CalibratorConfig):
        meta = setting.metadata
        if isinstance(setting.default, (int, float)) and setting.name != "seed":
            assert meta["minimum"] is not None or meta["positive"], setting.name
