"""Options shared by several commands."""

from __future__ import annotations

import click


def hold_output(path, option: str = "--out") -> None:
    """This command is the one writer of ``path`` until it ends (``OutputLock``, released when
    click closes the command's context): a second process writing it is refused in one line."""
    from ..core.fileio import OutputLock

    click.get_current_context().call_on_close(OutputLock(path, option).release)


def left_at_default(parameter: str) -> bool:
    """Whether the user left ``parameter`` (its Python name) at its default."""
    source = click.get_current_context().get_parameter_source(parameter)
    return source is click.core.ParameterSource.DEFAULT


def data_root_option(f):
    return click.option("--data-root", type=click.Path(file_okay=False), default=None,
                        help="Dataset folder [default: $EDGE_CALIB_DATA, else "
                             "~/.cache/edge-calib/data].")(f)


def training_options(f):
    """--epochs/--batch-size/--seed/--device/--max-samples/--quiet, as every trainer takes."""
    for decorator in reversed([
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
                     help="The global batch: under torchrun each of the N processes trains on "
                          "1/N of every batch (so N must divide it)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when present), cpu, cuda or cuda:N."),
        click.option("--max-samples", type=click.IntRange(min=1), default=None,
                     help="Use a random subset of N images per domain (quick runs)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]):
        f = decorator(f)
    return f


class Real(click.ParamType):
    """A finite float within [low, high] (``low_open``: above low): click's FloatRange lets
    nan through, and an infinite or huge value reached a sleep or an int() as a hang or a
    traceback."""

    name = "number"

    def __init__(self, low: float, high: float, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        above = number > self.low if self.low_open else number >= self.low
        if not (above and number <= self.high):  # also false for nan
            low = f"above {self.low:g}" if self.low_open else f"at least {self.low:g}"
            self.fail(f"{value} must be {low} and at most {self.high:g}", param, ctx)
        return number


def calibrator_options(only: tuple[str, ...] | None = None, defaults: dict | None = None,
                       helps: dict | None = None):
    """One click option per setting ``CalibratorConfig`` declares as an option (all of them,
    or those named in ``only``), with its declared type, choices and help; ``defaults`` and
    ``helps`` replace a declared default or help (``adapt``'s recipe)."""
    from ..train.settings import CalibratorConfig, option_name

    defaults, helps = defaults or {}, helps or {}

    def decorate(f):
        for setting in reversed(CalibratorConfig.options()):
            if only is not None and setting.name not in only:
                continue
            meta, declared = setting.metadata, setting.default
            if meta["choices"]:
                kind = click.Choice(list(meta["choices"]))
            elif isinstance(declared, int):
                kind = click.IntRange(min=meta["minimum"])
            else:  # floats are range-checked by validate(), which names the option
                kind = type(declared)
            f = click.option(option_name(setting), setting.name, type=kind,
                             default=defaults.get(setting.name, declared), show_default=True,
                             help=helps.get(setting.name, meta["help"]) or None)(f)
        return f
    return decorate
