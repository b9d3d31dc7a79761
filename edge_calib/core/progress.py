"""Progress bars on stderr (click's), shared by every long-running command."""

from __future__ import annotations

import sys

import click


def progress_bar(length: int, label: str, enabled: bool = True):
    """A click progress bar whose trailing text is set with ``bar.update(n, current_item=text)``."""
    return click.progressbar(length=max(1, length), label=label, file=sys.stderr,
                             hidden=not enabled, show_pos=True, show_eta=True,
                             item_show_func=lambda text: text)


def echo_err(message: str) -> None:
    click.echo(message, err=True)
